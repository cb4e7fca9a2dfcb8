//! `stem keys hmac|ed25519`: fresh signing keys as `STEM_SIGNING_*` lines.

use clap::Subcommand;
use stem::signing::{generate_ed25519_pair, generate_hmac_secret};

use crate::output::outln;

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// A 32-byte HMAC-SHA256 secret.
    Hmac {
        /// Key id.
        #[arg(long, default_value = "primary")]
        id: String,
    },
    /// An Ed25519 key pair (workers need only the public key).
    Ed25519 {
        /// Key id.
        #[arg(long, default_value = "primary")]
        id: String,
    },
}

pub(crate) fn run(cmd: KeysCommand) -> i32 {
    match cmd {
        KeysCommand::Hmac { id } => {
            outln!("STEM_SIGNING_ALGORITHM=hmac-sha256");
            outln!("STEM_SIGNING_KEYS={id}:{}", generate_hmac_secret());
            outln!("STEM_SIGNING_ACTIVE_KEY={id}");
        }
        KeysCommand::Ed25519 { id } => {
            let (public, seed) = generate_ed25519_pair();
            outln!("STEM_SIGNING_ALGORITHM=ed25519");
            outln!("STEM_SIGNING_PUBLIC_KEYS={id}:{public}");
            outln!("STEM_SIGNING_PRIVATE_KEYS={id}:{seed}");
            outln!("STEM_SIGNING_ACTIVE_KEY={id}");
            eprintln!(
                "# give workers only STEM_SIGNING_PUBLIC_KEYS; producers need the private key"
            );
        }
    }
    0
}
