//! Who is calling: the token mode both servers share. `AuthArgs` (flags and environment) builds
//! an `Auth`, which verifies a bearer token (JWT, keys from the configuration, never from the
//! token) into a `Caller`, and whose policy says what that caller may do.

mod args;
mod jwks;
mod keys;
mod policy;
#[cfg(test)]
mod testkeys;

pub use args::{
    AuthArgs, AuthError, Mode, SECRET_ENV, ServiceSigner, sign_hs256, sign_with_private_key,
};
pub use keys::Rejected;
pub use policy::{Audience, Auth, Caller, Claims, Denied, EventsClaim, Identity, bearer_token};
