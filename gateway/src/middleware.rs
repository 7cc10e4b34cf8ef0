//! What wraps requests before and after a handler: the trace span and request id (`traced`),
//! the `Host`/`Origin`/content-type guards (`guard`), CORS (`cors`), rate and stream limits
//! (`limits`), the one deadline of a REST request (`deadline`), the API traffic figures
//! (`track`), and `x-backend` on what a backend served (`served`).

mod cors;
mod deadline;
mod guard;
mod limits;
mod served;
mod traced;
mod track;

pub(crate) use cors::layer as cors;
pub(crate) use deadline::DeadlineLayer;
pub(crate) use guard::{Browsers, CorsOrigins, GuardLayer, HostPolicy, Hosts};
pub(crate) use limits::{ClientKey, LimitSettings, Limiters, StreamSlot};
pub(crate) use served::mark;
pub(crate) use traced::TracedLayer;
pub(crate) use track::TrackLayer;
