//! The bank: an example conformist service. Accounts, deposits, transfers, and a long
//! "interest accrual" written as a resumable step machine with a migration point after
//! every account. An optional auditor worker (`bank serve --audit-ms N`) runs beside the
//! operations: its state is checkpointed at its safe points and it continues where it
//! was after a restore or a migration.

use std::collections::BTreeMap;
use std::time::Duration;

use godwit_sdk::{service, Ctx, Portable, Step};

/// One account.
#[derive(Portable, Debug, Clone, PartialEq)]
pub struct Account {
    /// Owner's name.
    #[portable(tag = 1)]
    pub owner: String,
    /// Balance in cents.
    #[portable(tag = 2)]
    pub balance: i64,
}

/// The bank's whole state: this is what a checkpoint holds.
#[derive(Portable, Debug, Default)]
pub struct Bank {
    /// Accounts by id.
    #[portable(tag = 1)]
    pub accounts: BTreeMap<u64, Account>,
    /// Next account id.
    #[portable(tag = 2)]
    pub next_id: u64,
    /// Interest paid so far, all accounts (added in a later version: has a default).
    #[portable(tag = 3, default)]
    pub interest_paid: i64,
    /// The auditor worker's last report (added later: has a default).
    #[portable(tag = 4, default)]
    pub audit: Audit,
}

/// The auditor worker's state: lives in the worker, checkpointed at its safe points.
#[derive(Portable, Debug, Clone, Default, PartialEq)]
pub struct Audit {
    /// Audit rounds done since the bank was opened (across restores and migrations).
    #[portable(tag = 1)]
    pub rounds: u64,
    /// Sum of all balances at the last round.
    #[portable(tag = 2)]
    pub total: i64,
}

/// How the auditor runs (`bank serve --audit-ms N [--audit-stall-ms M]`).
#[derive(Debug, Clone, Copy)]
pub struct AuditorConfig {
    /// Pause between rounds (at a safe point).
    pub every: Duration,
    /// Time each round spends outside any safe point (to show the bounded wait of a
    /// checkpoint; 0 normally).
    pub stall: Duration,
}

/// Starts the auditor worker: every `every`, it sums the balances, counts the round
/// in its own state and publishes its report in the bank state (`audit`). Called from
/// the start and restore hooks; after a restore its state is the checkpointed one.
pub fn start_auditor(ctx: &Ctx<Bank>, cfg: AuditorConfig) {
    let mut w = match ctx.worker("auditor", Audit::default) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "auditor not started");
            return;
        }
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        // Every `pause` and `safe_point` is a safe point; `Err` means the service stops.
        while w.pause(cfg.every).await.is_ok() {
            if !cfg.stall.is_zero() {
                tokio::time::sleep(cfg.stall).await;
            }
            let total = ctx
                .read(|b| b.accounts.values().map(|a| a.balance).sum::<i64>())
                .unwrap_or(0);
            let st = w.state_mut();
            st.rounds += 1;
            st.total = total;
            let report = st.clone();
            ctx.write(|b| b.audit = report);
            if w.safe_point().await.is_err() {
                break;
            }
        }
    });
}

/// Why an operation was refused.
#[derive(Portable, Debug, Clone, PartialEq)]
pub enum BankError {
    /// No account with this id.
    NoSuchAccount {
        /// Id asked for.
        id: u64,
    },
    /// Not enough money.
    InsufficientFunds {
        /// Account.
        id: u64,
        /// Its balance.
        balance: i64,
        /// Amount wanted.
        wanted: i64,
    },
    /// Amounts must be positive.
    InvalidAmount {
        /// Amount given.
        amount: i64,
    },
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::NoSuchAccount { id } => write!(f, "no account {id}"),
            BankError::InsufficientFunds {
                id,
                balance,
                wanted,
            } => {
                write!(f, "account {id} holds {balance}, {wanted} wanted")
            }
            BankError::InvalidAmount { amount } => write!(f, "invalid amount {amount}"),
        }
    }
}

impl std::error::Error for BankError {}

/// Where an interest accrual is: the stage of execution plus the locals live there.
#[derive(Portable, Debug, Clone, Default, PartialEq)]
pub enum Accrual {
    /// Not started.
    #[default]
    Start,
    /// Paying account `ids[next]` next; `credited` so far.
    Paying {
        /// Accounts to pay, fixed when the accrual started.
        ids: Vec<u64>,
        /// Index of the next account.
        next: u64,
        /// (account, interest credited), in order.
        credited: Vec<(u64, i64)>,
    },
}

impl Bank {
    fn account(&mut self, id: u64) -> Result<&mut Account, BankError> {
        self.accounts
            .get_mut(&id)
            .ok_or(BankError::NoSuchAccount { id })
    }
}

#[service(name = "bank")]
impl Bank {
    /// Opens an account with an initial deposit; returns its id.
    pub fn open(&mut self, owner: String, initial: i64) -> Result<u64, BankError> {
        if initial < 0 {
            return Err(BankError::InvalidAmount { amount: initial });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.accounts.insert(
            id,
            Account {
                owner,
                balance: initial,
            },
        );
        Ok(id)
    }

    /// Adds money; returns the new balance.
    pub fn deposit(&mut self, id: u64, amount: i64) -> Result<i64, BankError> {
        if amount <= 0 {
            return Err(BankError::InvalidAmount { amount });
        }
        let a = self.account(id)?;
        a.balance += amount;
        Ok(a.balance)
    }

    /// Moves `amount` from one account to another.
    pub fn transfer(&mut self, from: u64, to: u64, amount: i64) -> Result<(), BankError> {
        if amount <= 0 {
            return Err(BankError::InvalidAmount { amount });
        }
        self.account(to)?;
        let src = self.account(from)?;
        if src.balance < amount {
            return Err(BankError::InsufficientFunds {
                id: from,
                balance: src.balance,
                wanted: amount,
            });
        }
        src.balance -= amount;
        self.account(to)?.balance += amount;
        Ok(())
    }

    /// One balance.
    pub fn balance(&self, id: u64) -> Result<i64, BankError> {
        self.accounts
            .get(&id)
            .map(|a| a.balance)
            .ok_or(BankError::NoSuchAccount { id })
    }

    /// The auditor's last report.
    pub fn audit(&self) -> Audit {
        self.audit.clone()
    }

    /// Every balance.
    pub fn balances(&self) -> BTreeMap<u64, i64> {
        self.accounts
            .iter()
            .map(|(id, a)| (*id, a.balance))
            .collect()
    }

    /// Credits `rate_bp` basis points of interest to every account, one account per step,
    /// pausing `pause_ms` between accounts. Returns what each account was credited.
    /// Each return is a migration point: the stage (with the accounts still to pay and
    /// what was credited) is saved atomically with the balances.
    #[resumable]
    pub fn accrue_interest(
        &mut self,
        stage: Accrual,
        rate_bp: u32,
        pause_ms: u64,
    ) -> Step<Accrual, Vec<(u64, i64)>> {
        match stage {
            Accrual::Start => {
                let ids = self.accounts.keys().copied().collect();
                Step::Next(Accrual::Paying {
                    ids,
                    next: 0,
                    credited: Vec::new(),
                })
            }
            Accrual::Paying {
                ids,
                next,
                credited,
            } if next as usize >= ids.len() => {
                let _ = ids;
                Step::Done(credited)
            }
            Accrual::Paying {
                ids,
                next,
                mut credited,
            } => {
                let id = ids[next as usize];
                let interest = match self.accounts.get_mut(&id) {
                    Some(a) if a.balance > 0 => {
                        let i = a.balance * i64::from(rate_bp) / 10_000;
                        a.balance += i;
                        i
                    }
                    _ => 0,
                };
                self.interest_paid += interest;
                credited.push((id, interest));
                Step::Sleep(
                    Accrual::Paying {
                        ids,
                        next: next + 1,
                        credited,
                    },
                    Duration::from_millis(pause_ms),
                )
            }
        }
    }
}
