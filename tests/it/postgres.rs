//! tokend on PostgreSQL: the real daemon on a real PostgreSQL server that the
//! tests start themselves (`support::postgres`), with the strict fake
//! provider.

use crate::support::postgres::{server, ROLE};

#[test]
fn the_harness_serves_each_test_its_own_database() {
    let pg = server();
    let (a, b) = (pg.database(), pg.database());
    assert_ne!(a, b);
    let owner = pg.admin_sql(
        "postgres",
        &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{a}'"),
    );
    assert_eq!(owner.trim(), ROLE);
    assert_eq!(pg.admin_sql(&b, "SELECT 1").trim(), "1");
}
