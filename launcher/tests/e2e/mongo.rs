//! What only MongoDB has: the old Go service's documents, through `eventsys up` with
//! `MONGO_URI`. The cases every engine shares are in `stores`.

mod legacy;
