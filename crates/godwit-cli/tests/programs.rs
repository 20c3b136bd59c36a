//! Each test program sets one kind of state up; after dump + restore (and
//! after dump --leave-running + restore of the copy once the original is
//! killed) it checks that state itself and reports PASS.

mod common;
use common::round_trip;

macro_rules! case {
    ($name:ident) => {
        mod $name {
            #[test]
            fn dump_restore() {
                super::round_trip(stringify!($name), false);
            }
            #[test]
            fn leave_running_restore_copy() {
                super::round_trip(stringify!($name), true);
            }
        }
    };
}

case!(memory);
case!(threads);
case!(signals);
case!(files);
case!(attrs);
