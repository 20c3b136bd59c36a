//! Macros of the Godwit conformist-service SDK. Use them through `godwit_sdk`:
//! `#[derive(godwit_sdk::Portable)]` and `#[godwit_sdk::service]`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, Attribute, Data, DeriveInput, Error, Fields, FnArg, GenericArgument,
    ImplItem, ItemImpl, LitInt, LitStr, Pat, PathArguments, ReturnType, Type,
};

// ---------------------------------------------------------------------------------------
// #[derive(Portable)]
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct FieldAttrs {
    tag: Option<u32>,
    default: bool,
    default_fn: Option<syn::Path>,
}

fn field_attrs(attrs: &[Attribute]) -> syn::Result<FieldAttrs> {
    let mut out = FieldAttrs::default();
    for attr in attrs {
        if !attr.path().is_ident("portable") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("tag") {
                let lit: LitInt = meta.value()?.parse()?;
                let tag: u32 = lit.base10_parse()?;
                if tag == 0 {
                    return Err(meta.error("tags start at 1"));
                }
                out.tag = Some(tag);
                Ok(())
            } else if meta.path.is_ident("default") {
                out.default = true;
                if meta.input.peek(syn::Token![=]) {
                    let lit: LitStr = meta.value()?.parse()?;
                    out.default_fn = Some(lit.parse()?);
                }
                Ok(())
            } else {
                Err(meta.error("expected `tag = N` or `default` or `default = \"path\"`"))
            }
        })?;
    }
    Ok(out)
}

fn is_option(ty: &Type) -> bool {
    if let Type::Path(p) = ty {
        if let Some(seg) = p.path.segments.last() {
            return seg.ident == "Option"
                && matches!(seg.arguments, PathArguments::AngleBracketed(_));
        }
    }
    false
}

struct FieldInfo {
    /// Accessor: `a` for named, `0` for tuple.
    member: syn::Member,
    /// Binding used in patterns.
    binding: syn::Ident,
    /// Name recorded in the schema.
    name: String,
    tag: u32,
    ty: Type,
    attrs: FieldAttrs,
}

fn collect_fields(fields: &Fields) -> syn::Result<Vec<FieldInfo>> {
    let mut out = Vec::new();
    let mut used = std::collections::BTreeMap::new();
    for (i, f) in fields.iter().enumerate() {
        let attrs = field_attrs(&f.attrs)?;
        let tag = attrs.tag.unwrap_or(i as u32 + 1);
        let (member, binding, name) = match &f.ident {
            Some(id) => (syn::Member::Named(id.clone()), id.clone(), id.to_string()),
            None => (
                syn::Member::Unnamed(syn::Index::from(i)),
                format_ident!("f{}", i),
                i.to_string(),
            ),
        };
        if let Some(prev) = used.insert(tag, name.clone()) {
            return Err(Error::new(
                f.span(),
                format!("tag {tag} is used by `{prev}` and `{name}`"),
            ));
        }
        out.push(FieldInfo {
            member,
            binding,
            name,
            tag,
            ty: f.ty.clone(),
            attrs,
        });
    }
    Ok(out)
}

fn schema_fields(fields: &[FieldInfo]) -> TokenStream2 {
    let items = fields.iter().map(|f| {
        let name = &f.name;
        let tag = f.tag;
        let ty = &f.ty;
        let has_default = f.attrs.default || is_option(&f.ty);
        quote! { ::godwit_sdk::schema::Field::new(#name, #tag, <#ty as ::godwit_sdk::Portable>::schema(), #has_default) }
    });
    quote! { ::std::vec![#(#items),*] }
}

fn encode_fields(
    fields: &[FieldInfo],
    access: impl Fn(&FieldInfo) -> TokenStream2,
) -> TokenStream2 {
    let n = fields.len() as u32;
    let puts = fields.iter().map(|f| {
        let tag = f.tag;
        let a = access(f);
        quote! { __e.field(#tag, #a); }
    });
    quote! {
        let mut __e = ::godwit_sdk::codec::StructEncoder::begin(out, #n);
        let _ = &mut __e;
        #(#puts)*
    }
}

fn decode_field(f: &FieldInfo) -> TokenStream2 {
    let tag = f.tag;
    let name = &f.name;
    let ty = &f.ty;
    if let Some(path) = &f.attrs.default_fn {
        quote! { __d.take::<#ty>(#tag, #name)?.unwrap_or_else(#path) }
    } else if f.attrs.default || is_option(&f.ty) {
        quote! { __d.take::<#ty>(#tag, #name)?.unwrap_or_default() }
    } else {
        quote! { __d.required::<#ty>(#tag, #name)? }
    }
}

/// Derives `godwit_sdk::Portable`: the platform-independent, versioned encoding.
///
/// Field attributes: `#[portable(tag = N)]` pins the field's tag (default: position,
/// from 1); `#[portable(default)]` or `#[portable(default = "path::to::fn")]` lets
/// checkpoints that lack the field decode (an `Option` field is always optional).
#[proc_macro_derive(Portable, attributes(portable))]
pub fn derive_portable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match derive_portable_impl(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn derive_portable_impl(input: DeriveInput) -> syn::Result<TokenStream2> {
    let ident = &input.ident;
    let type_name = ident.to_string();
    let mut generics = input.generics.clone();
    for p in generics.type_params_mut() {
        p.bounds.push(syn::parse_quote!(::godwit_sdk::Portable));
    }
    let (impl_g, ty_g, where_g) = generics.split_for_impl();

    let (schema, encode, decode) = match &input.data {
        Data::Struct(s) => {
            let fields = collect_fields(&s.fields)?;
            let sf = schema_fields(&fields);
            let enc = encode_fields(&fields, |f| {
                let m = &f.member;
                quote! { &self.#m }
            });
            let dec_items = fields.iter().map(|f| {
                let m = &f.member;
                let d = decode_field(f);
                quote! { #m: #d }
            });
            (
                quote! { ::godwit_sdk::schema::Schema::Struct { name: #type_name.into(), fields: #sf } },
                enc,
                quote! {
                    let mut __d = ::godwit_sdk::codec::StructDecoder::read(r, #type_name)?;
                    ::std::result::Result::Ok(#ident { #(#dec_items),* })
                },
            )
        }
        Data::Enum(e) => {
            let mut variants_schema = Vec::new();
            let mut enc_arms = Vec::new();
            let mut dec_arms = Vec::new();
            let mut used = std::collections::BTreeMap::new();
            for (i, v) in e.variants.iter().enumerate() {
                let attrs = field_attrs(&v.attrs)?;
                if attrs.default {
                    return Err(Error::new(
                        v.span(),
                        "`default` applies to fields, not variants",
                    ));
                }
                let vtag = attrs.tag.unwrap_or(i as u32 + 1);
                let vname = v.ident.to_string();
                if let Some(prev) = used.insert(vtag, vname.clone()) {
                    return Err(Error::new(
                        v.span(),
                        format!("variant tag {vtag} is used by `{prev}` and `{vname}`"),
                    ));
                }
                let vid = &v.ident;
                let fields = collect_fields(&v.fields)?;
                let sf = schema_fields(&fields);
                variants_schema
                    .push(quote! { ::godwit_sdk::schema::Variant::new(#vname, #vtag, #sf) });
                let bindings: Vec<_> = fields.iter().map(|f| &f.binding).collect();
                let pat = match &v.fields {
                    Fields::Named(_) => quote! { #ident::#vid { #(#bindings),* } },
                    Fields::Unnamed(_) => quote! { #ident::#vid ( #(#bindings),* ) },
                    Fields::Unit => quote! { #ident::#vid },
                };
                let enc = encode_fields(&fields, |f| {
                    let b = &f.binding;
                    quote! { #b }
                });
                enc_arms.push(quote! {
                    #pat => {
                        ::godwit_sdk::codec::put_u32(out, #vtag);
                        #enc
                    }
                });
                let full = format!("{type_name}::{vname}");
                let dec_items: Vec<_> = fields
                    .iter()
                    .map(|f| {
                        let d = decode_field(f);
                        let m = &f.member;
                        quote! { #m: #d }
                    })
                    .collect();
                let build = match &v.fields {
                    Fields::Unit => quote! { #ident::#vid },
                    _ => quote! { #ident::#vid { #(#dec_items),* } },
                };
                dec_arms.push(quote! {
                    #vtag => {
                        let mut __d = ::godwit_sdk::codec::StructDecoder::read(r, #full)?;
                        let _ = &mut __d;
                        ::std::result::Result::Ok(#build)
                    }
                });
            }
            (
                quote! { ::godwit_sdk::schema::Schema::Enum { name: #type_name.into(), variants: ::std::vec![#(#variants_schema),*] } },
                quote! { match self { #(#enc_arms)* } },
                quote! {
                    let __tag = r.u32()?;
                    match __tag {
                        #(#dec_arms)*
                        other => ::std::result::Result::Err(::godwit_sdk::DecodeError::UnknownVariant { ty: #type_name.into(), tag: other }),
                    }
                },
            )
        }
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span(),
                "unions cannot be Portable",
            ))
        }
    };

    Ok(quote! {
        impl #impl_g ::godwit_sdk::Portable for #ident #ty_g #where_g {
            fn schema() -> ::godwit_sdk::schema::Schema { #schema }
            #[allow(unused_variables)]
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) { #encode }
            fn decode(r: &mut ::godwit_sdk::codec::Reader<'_>) -> ::std::result::Result<Self, ::godwit_sdk::DecodeError> { #decode }
        }
    })
}

// ---------------------------------------------------------------------------------------
// #[service]
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Read,
    Write,
    Resumable,
}

struct Method {
    ident: syn::Ident,
    kind: Kind,
    args: Vec<(syn::Ident, Type)>,
    ret: Type,
    /// For resumable methods: stage type and result type of `Step<S, R>`.
    step: Option<(Type, Type)>,
    /// `#[durable]`: logged before its reply (with `--durable-log`).
    durable: bool,
    doc: Vec<Attribute>,
}

fn step_types(ret: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ret else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Step" {
        return None;
    }
    let PathArguments::AngleBracketed(a) = &seg.arguments else {
        return None;
    };
    let mut tys = a.args.iter().filter_map(|g| match g {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    Some((tys.next()?, tys.next()?))
}

/// Makes an `impl` block a conformist service.
///
/// Every `pub` method with a `self` receiver becomes an operation (other methods are
/// private helpers and stay as they are): `&self` methods are reads,
/// `&mut self` methods are writes (executed at most once per call id), and methods marked
/// `#[resumable]` are long operations written as a step function
/// `fn op(&mut self, stage: S, args...) -> Step<S, R>` whose stage is saved at every
/// migration point. A write marked `#[durable]` is logged before its reply when the
/// service runs with `--durable-log`; once any is marked, only the marked ones are
/// (docs/SDK.md, "Durable calls"). Generates `impl godwit_sdk::Service` and a typed client
/// `<Type>Client`. Optional: `#[service(name = "bank")]`.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name: Option<String> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            name = Some(lit.value());
            Ok(())
        } else {
            Err(meta.error("expected `name = \"...\"`"))
        }
    });
    parse_macro_input!(attr with parser);
    let item = parse_macro_input!(item as ItemImpl);
    match service_impl(name, item) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn service_impl(name: Option<String>, mut item: ItemImpl) -> syn::Result<TokenStream2> {
    if item.trait_.is_some() {
        return Err(Error::new(
            item.span(),
            "#[service] goes on an inherent impl block",
        ));
    }
    if !item.generics.params.is_empty() {
        return Err(Error::new(
            item.generics.span(),
            "a service type cannot be generic",
        ));
    }
    let self_ty = (*item.self_ty).clone();
    let Type::Path(tp) = &self_ty else {
        return Err(Error::new(self_ty.span(), "expected a type name"));
    };
    let type_ident = tp
        .path
        .segments
        .last()
        .map(|s| s.ident.clone())
        .ok_or_else(|| Error::new(tp.span(), "empty path"))?;
    let service_name = name.unwrap_or_else(|| type_ident.to_string().to_lowercase());
    let client_ident = format_ident!("{}Client", type_ident);

    let mut methods = Vec::new();
    // Every problem is reported at once, each at its own place.
    let mut errors: Option<Error> = None;
    let mut fail = |e: Error| match errors.as_mut() {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for it in item.items.iter_mut() {
        let ImplItem::Fn(f) = it else { continue };
        let resumable = f.attrs.iter().any(|a| a.path().is_ident("resumable"));
        f.attrs.retain(|a| !a.path().is_ident("resumable"));
        let durable = f
            .attrs
            .iter()
            .find(|a| a.path().is_ident("durable"))
            .map(|a| a.span());
        f.attrs.retain(|a| !a.path().is_ident("durable"));
        // Only `pub` methods are operations: private helpers may live in the same impl.
        if !matches!(f.vis, syn::Visibility::Public(_)) {
            if resumable {
                fail(Error::new(
                    f.sig.ident.span(),
                    format!(
                        "#[resumable] on a private method: only `pub` methods are operations; write `pub fn {}`",
                        f.sig.ident
                    ),
                ));
            }
            if durable.is_some() {
                fail(Error::new(
                    f.sig.ident.span(),
                    format!(
                        "#[durable] on a private method: only `pub` methods are operations; write `pub fn {}`",
                        f.sig.ident
                    ),
                ));
            }
            continue;
        }
        let Some(FnArg::Receiver(recv)) = f.sig.inputs.first() else {
            if resumable {
                fail(Error::new(
                    f.sig.ident.span(),
                    "a #[resumable] operation takes `&mut self` first",
                ));
            }
            if durable.is_some() {
                fail(Error::new(
                    f.sig.ident.span(),
                    "a #[durable] operation takes `&mut self` first",
                ));
            }
            continue;
        };
        if f.sig.asyncness.is_some() {
            fail(Error::new(f.sig.asyncness.span(), "service operations are plain (non-async) functions; use #[resumable] with `Step` for long operations"));
            continue;
        }
        if recv.reference.is_none() {
            fail(Error::new(
                recv.span(),
                "operations take `&self` or `&mut self`",
            ));
            continue;
        }
        let mutable = recv.mutability.is_some();
        let kind = match (resumable, mutable) {
            (true, true) => Kind::Resumable,
            (true, false) => {
                fail(Error::new(
                    recv.span(),
                    "a #[resumable] operation takes `&mut self`",
                ));
                continue;
            }
            (false, true) => Kind::Write,
            (false, false) => Kind::Read,
        };
        if let Some(span) = durable {
            match kind {
                Kind::Write => {}
                Kind::Read => fail(Error::new(
                    span,
                    format!(
                        "#[durable] on `{}`, a read (`&self`): a read changes nothing, there is nothing to log; remove #[durable], or take `&mut self` if it writes",
                        f.sig.ident
                    ),
                )),
                Kind::Resumable => fail(Error::new(
                    span,
                    format!(
                        "#[durable] on `{}`, a #[resumable] operation: the durable call log holds write calls only; a resumable operation is saved with the state at its migration points (checkpoints), so remove #[durable]",
                        f.sig.ident
                    ),
                )),
            }
        }
        let mut args = Vec::new();
        let mut ok = true;
        for a in f.sig.inputs.iter().skip(1) {
            let FnArg::Typed(pt) = a else { continue };
            let Pat::Ident(pi) = &*pt.pat else {
                fail(Error::new(
                    pt.pat.span(),
                    "operation arguments must be plain identifiers",
                ));
                ok = false;
                continue;
            };
            if matches!(*pt.ty, Type::Reference(_)) {
                fail(Error::new(
                    pt.ty.span(),
                    "operation arguments must be owned Portable values (take `T`, not `&T`); a helper that needs references can be a private method",
                ));
                ok = false;
                continue;
            }
            args.push((pi.ident.clone(), (*pt.ty).clone()));
        }
        let ret: Type = match &f.sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, t) => (**t).clone(),
        };
        let step = if kind == Kind::Resumable {
            let Some(st) = step_types(&ret) else {
                fail(Error::new(
                    ret.span(),
                    "a #[resumable] operation returns `Step<Stage, Reply>`",
                ));
                continue;
            };
            let stage_ty = &st.0;
            let stage_name = quote!(#stage_ty).to_string().replace(' ', "");
            let first = args.first().map(|(id, ty)| (id.clone(), ty.clone()));
            match first {
                Some((_, ty)) if quote!(#ty).to_string().replace(' ', "") == stage_name => {
                    args.remove(0);
                }
                other => {
                    let found = match &other {
                        Some((id, ty)) => format!(
                            "its first argument is `{id}: {}`",
                            quote!(#ty).to_string().replace(' ', "")
                        ),
                        None => "it has no argument".to_string(),
                    };
                    let span = match f.sig.inputs.iter().nth(1) {
                        Some(a) => a.span(),
                        None => f.sig.ident.span(),
                    };
                    fail(Error::new(
                        span,
                        format!(
                            "a #[resumable] operation's first argument after `&mut self` is its stage, of the type `{stage_name}` its `Step<{stage_name}, _>` names, but {found}; write `fn {}(&mut self, stage: {stage_name}, ...)`",
                            f.sig.ident
                        ),
                    ));
                    continue;
                }
            }
            Some(st)
        } else {
            None
        };
        if !ok {
            continue;
        }
        let doc = f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect();
        methods.push(Method {
            ident: f.sig.ident.clone(),
            kind,
            args,
            ret,
            step,
            durable: durable.is_some(),
            doc,
        });
    }
    if let Some(e) = errors {
        return Err(e);
    }

    let sdk = quote! { ::godwit_sdk };
    let mut infos = Vec::new();
    let mut read_arms = Vec::new();
    let mut write_arms = Vec::new();
    let mut step_arms = Vec::new();
    let mut initial_arms = Vec::new();
    let mut client_fns = Vec::new();

    for m in &methods {
        let mname = m.ident.to_string();
        let ident = &m.ident;
        let args_name = format!("{service_name}.{mname}.args");
        let arg_fields = m.args.iter().enumerate().map(|(i, (id, ty))| {
            let n = id.to_string();
            let tag = i as u32 + 1;
            let opt = is_option(ty);
            quote! { #sdk::schema::Field::new(#n, #tag, <#ty as #sdk::Portable>::schema(), #opt) }
        });
        let reply_ty = match &m.step {
            Some((_, r)) => r.clone(),
            None => m.ret.clone(),
        };
        let kind_tok = match m.kind {
            Kind::Read => quote! { #sdk::MethodKind::Read },
            Kind::Write => quote! { #sdk::MethodKind::Write },
            Kind::Resumable => quote! { #sdk::MethodKind::Resumable },
        };
        let stage_schema = match &m.step {
            Some((s, _)) => {
                quote! { ::std::option::Option::Some(<#s as #sdk::Portable>::schema()) }
            }
            None => quote! { ::std::option::Option::None },
        };
        let durable = m.durable;
        infos.push(quote! {
            #sdk::MethodInfo {
                name: #mname,
                kind: #kind_tok,
                args: #sdk::schema::Schema::Struct { name: #args_name.into(), fields: ::std::vec![#(#arg_fields),*] },
                reply: <#reply_ty as #sdk::Portable>::schema(),
                stage: #stage_schema,
                durable: #durable,
            }
        });

        let arg_ids: Vec<_> = m.args.iter().map(|(id, _)| id.clone()).collect();
        let decode_args = m.args.iter().enumerate().map(|(i, (id, ty))| {
            let n = id.to_string();
            let tag = i as u32 + 1;
            if is_option(ty) {
                quote! { let #id: #ty = __d.take::<#ty>(#tag, #n)?.unwrap_or_default(); }
            } else {
                quote! { let #id: #ty = __d.required::<#ty>(#tag, #n)?; }
            }
        });
        let decode_args = quote! {
            let mut __r = #sdk::codec::Reader::new(__args);
            let mut __d = #sdk::codec::StructDecoder::read(&mut __r, #args_name)?;
            let _ = &mut __d;
            #(#decode_args)*
        };
        match m.kind {
            Kind::Read => read_arms.push(quote! {
                #mname => {
                    #decode_args
                    let __ret: #reply_ty = self.#ident(#(#arg_ids),*);
                    ::std::result::Result::Ok(#sdk::codec::to_vec(&__ret))
                }
            }),
            Kind::Write => write_arms.push(quote! {
                #mname => {
                    #decode_args
                    let __ret: #reply_ty = self.#ident(#(#arg_ids),*);
                    ::std::result::Result::Ok(#sdk::codec::to_vec(&__ret))
                }
            }),
            Kind::Resumable => {
                let (stage_ty, _) = m.step.as_ref().expect("resumable has step types");
                step_arms.push(quote! {
                    #mname => {
                        #decode_args
                        let __stage: #stage_ty = #sdk::codec::from_slice(__stage)?;
                        ::std::result::Result::Ok(#sdk::StepOutcome::from_step(self.#ident(__stage, #(#arg_ids),*)))
                    }
                });
                initial_arms.push(quote! {
                    #mname => ::std::result::Result::Ok(#sdk::codec::to_vec(&<#stage_ty as ::std::default::Default>::default())),
                });
            }
        }

        let params = m.args.iter().map(|(id, ty)| quote! { #id: #ty });
        let n = m.args.len() as u32;
        let puts = m.args.iter().enumerate().map(|(i, (id, _))| {
            let tag = i as u32 + 1;
            quote! { __e.field(#tag, &#id); }
        });
        let doc = &m.doc;
        client_fns.push(quote! {
            #(#doc)*
            pub async fn #ident(&self, #(#params),*) -> ::std::result::Result<#reply_ty, #sdk::CallError> {
                let mut __buf = ::std::vec::Vec::new();
                {
                    let out = &mut __buf;
                    let mut __e = #sdk::codec::StructEncoder::begin(out, #n);
                    let _ = &mut __e;
                    #(#puts)*
                }
                let __reply = self.inner.call(#mname, #kind_tok, __buf).await?;
                #sdk::codec::from_slice::<#reply_ty>(&__reply).map_err(#sdk::CallError::BadReply)
            }
        });
    }

    let unknown = quote! { other => ::std::result::Result::Err(#sdk::DispatchError::UnknownMethod(other.to_string())) };
    let doc_client =
        format!("Typed client of the `{service_name}` service (generated by `#[service]`).");
    let span = Span::call_site();
    let _ = span;
    Ok(quote! {
        #item

        impl #sdk::Service for #self_ty {
            const NAME: &'static str = #service_name;
            fn methods() -> ::std::vec::Vec<#sdk::MethodInfo> { ::std::vec![#(#infos),*] }
            #[allow(unused_variables, unreachable_code)]
            fn call_read(&self, __method: &str, __args: &[u8]) -> ::std::result::Result<::std::vec::Vec<u8>, #sdk::DispatchError> {
                match __method { #(#read_arms)* #unknown }
            }
            #[allow(unused_variables, unreachable_code)]
            fn call_write(&mut self, __method: &str, __args: &[u8]) -> ::std::result::Result<::std::vec::Vec<u8>, #sdk::DispatchError> {
                match __method { #(#write_arms)* #unknown }
            }
            #[allow(unused_variables, unreachable_code)]
            fn step(&mut self, __method: &str, __args: &[u8], __stage: &[u8]) -> ::std::result::Result<#sdk::StepOutcome, #sdk::DispatchError> {
                match __method { #(#step_arms)* #unknown }
            }
            fn initial_stage(__method: &str) -> ::std::result::Result<::std::vec::Vec<u8>, #sdk::DispatchError> {
                match __method { #(#initial_arms)* #unknown }
            }
        }

        #[doc = #doc_client]
        #[derive(Clone, Debug)]
        pub struct #client_ident {
            inner: #sdk::Client,
        }

        impl #client_ident {
            /// Wraps a generic client bound to a service of this type.
            pub fn new(inner: #sdk::Client) -> Self { Self { inner } }
            /// The generic client (binding, call ids, retries).
            pub fn raw(&self) -> &#sdk::Client { &self.inner }
            #(#client_fns)*
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pub_methods_are_operations() {
        let item: ItemImpl = syn::parse_quote! {
            impl Bank {
                pub fn open(&mut self, owner: String) -> u64 { 0 }
                fn helper(&mut self, id: &u64) -> &mut u64 { todo!() }
                pub(crate) fn internal(&self) -> u64 { 0 }
            }
        };
        let out = service_impl(None, item).unwrap().to_string();
        assert!(out.contains("\"open\""), "{out}");
        assert!(!out.contains("\"helper\""), "{out}");
        assert!(!out.contains("\"internal\""), "{out}");
    }

    #[test]
    fn every_error_is_reported_at_once_with_a_hint() {
        let item: ItemImpl = syn::parse_quote! {
            impl Bank {
                #[resumable]
                pub fn accrue(&mut self, rate_bp: u32, pause_ms: u64) -> Step<Accrual, u64> { todo!() }
                pub async fn fetch(&self) -> u64 { 0 }
                pub fn name(&self, who: &str) -> String { String::new() }
                #[resumable]
                fn hidden(&mut self, stage: Accrual) -> Step<Accrual, u64> { todo!() }
                pub fn fine(&self) -> u64 { 0 }
                #[durable]
                pub fn peek(&self) -> u64 { 0 }
                #[durable]
                #[resumable]
                pub fn sweep(&mut self, stage: Accrual) -> Step<Accrual, u64> { todo!() }
                #[durable]
                pub fn deposit(&mut self, n: u64) -> u64 { n }
            }
        };
        let msgs: Vec<String> = service_impl(None, item)
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(msgs.len(), 6, "{msgs:#?}");
        assert!(
            msgs[0]
                .contains("first argument after `&mut self` is its stage, of the type `Accrual`")
                && msgs[0].contains("`rate_bp: u32`")
                && msgs[0].contains("fn accrue(&mut self, stage: Accrual, ...)"),
            "{}",
            msgs[0]
        );
        assert!(msgs[1].contains("non-async"), "{}", msgs[1]);
        assert!(msgs[2].contains("owned Portable values"), "{}", msgs[2]);
        assert!(msgs[3].contains("private method"), "{}", msgs[3]);
        assert!(
            msgs[4].contains("#[durable] on `peek`, a read")
                && msgs[4].contains("remove #[durable]"),
            "{}",
            msgs[4]
        );
        assert!(
            msgs[5].contains("#[durable] on `sweep`, a #[resumable] operation"),
            "{}",
            msgs[5]
        );
    }
}
