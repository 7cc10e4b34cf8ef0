//! The system across hosts on a real (virtual) network: network namespaces joined by veth pairs
//! on a bridge, backend hosts and a gateway host that finds them by one name in its own hosts
//! file, and (for PostgreSQL) the database on a host of its own. A host's link set down loses
//! packets silently, which loopback cannot do. Needs root; SKIPPED loudly otherwise.

mod net;
mod postgres;
mod sqlite;
