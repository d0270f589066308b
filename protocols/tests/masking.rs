//! SQL masking corpus: every quoting and comment form of PostgreSQL and
//! MySQL/MariaDB, each hiding a secret that must not appear anywhere in
//! what the SQL reader returns (statement, verb, tables), read in its own
//! dialect and in the generic one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

use proptest::prelude::*;
use tangle_protocols::sql::{self, Dialect};

/// (statement, secret) read as PostgreSQL.
const POSTGRES: &[(&str, &str)] = &[
    (
        "SELECT * FROM users WHERE pw = 'pg-secret-01'",
        "pg-secret-01",
    ),
    ("SELECT 'a''pg-secret-02'''", "pg-secret-02"),
    ("SELECT E'it\\'s pg-secret-03'", "pg-secret-03"),
    ("SELECT e'\\\\', 'pg-secret-04'", "pg-secret-04"),
    // Standard strings: the backslash is a plain character here, an escape
    // with standard_conforming_strings off. The readings disagree: masked.
    ("SELECT 'C:\\' , 'pg-secret-05' FROM t", "pg-secret-05"),
    ("SELECT $$pg-secret-06$$", "pg-secret-06"),
    (
        "SELECT $tag$ it's $$ pg-secret-07 $tag$ FROM t",
        "pg-secret-07",
    ),
    (
        "DO $body$ BEGIN PERFORM 'x'; RAISE 'pg-secret-08'; END $body$",
        "pg-secret-08",
    ),
    (
        "SELECT 1 /* outer /* inner */ pg-secret-09 */ FROM t",
        "pg-secret-09",
    ),
    ("SELECT 1 -- pg-secret-10\nFROM t", "pg-secret-10"),
    ("ALTER USER bob PASSWORD 'pg-secret-11'", "pg-secret-11"),
    (
        "CREATE ROLE bob LOGIN PASSWORD 'pg-secret-12' VALID UNTIL 'infinity'",
        "pg-secret-12",
    ),
    ("SELECT U&'pg-secret-13\\0021'", "pg-secret-13"),
    ("SELECT N'pg-secret-14', B'1010', X'1F'", "pg-secret-14"),
    ("SELECT 'unterminated pg-secret-15", "pg-secret-15"),
    ("SELECT $x$ unterminated pg-secret-16", "pg-secret-16"),
    ("SELECT 'x' || 'pg-secret-17' FROM t", "pg-secret-17"),
    (
        "SELECT * FROM t WHERE card = 4111111111111111",
        "4111111111111111",
    ),
    (
        "SELECT * FROM t WHERE ssn IN ('123-45-6789', '987-65-4321')",
        "123-45-6789",
    ),
    ("SELECT 1 /* unterminated pg-secret-18", "pg-secret-18"),
    ("SELECT 'héllo wörld pg-secret-19 ünïcödé'", "pg-secret-19"),
    (
        "INSERT INTO \"Users\" (name, token) VALUES ('ann', 'pg-secret-20')",
        "pg-secret-20",
    ),
    ("COPY t FROM PROGRAM 'curl pg-secret-21'", "pg-secret-21"),
];

/// (statement, secret) read as MySQL/MariaDB.
const MYSQL: &[(&str, &str)] = &[
    (
        "CREATE USER 'bob'@'%' IDENTIFIED BY \"my-secret-01\"",
        "my-secret-01",
    ),
    (
        "SET PASSWORD FOR 'bob'@'%' = 'my-secret-02'",
        "my-secret-02",
    ),
    ("SELECT \"it\\\"s my-secret-03\"", "my-secret-03"),
    // A backslash escape (or, with NO_BACKSLASH_ESCAPES, not): masked.
    ("SELECT 'it\\'s my-secret-04' FROM t", "my-secret-04"),
    ("SELECT 1 # my-secret-05\nFROM t", "my-secret-05"),
    ("SELECT 1 /* my-secret-06 */ FROM t", "my-secret-06"),
    ("SELECT _utf8mb4'my-secret-07'", "my-secret-07"),
    (
        "SELECT x'6d792d736563726574', X'00', 0x6d79",
        "6d792d736563726574",
    ),
    (
        "INSERT INTO t VALUES ('a', \"my-secret-08\"), ('b', 'my-secret-09')",
        "my-secret-08",
    ),
    (
        "INSERT INTO t VALUES ('a', \"x\"), ('b', 'my-secret-09')",
        "my-secret-09",
    ),
    ("SELECT 'a''my-secret-10'", "my-secret-10"),
    ("SELECT /*!40101 'my-secret-11' */ 1", "my-secret-11"),
    (
        "GRANT ALL ON db.* TO 'u'@'h' IDENTIFIED BY 'my-secret-12'",
        "my-secret-12",
    ),
    ("SELECT \"unterminated my-secret-13", "my-secret-13"),
    ("CALL proc('my-secret-14', @out)", "my-secret-14"),
    ("SELECT 1 -- my-secret-15\nFROM t", "my-secret-15"),
    ("SELECT N'my-secret-16'", "my-secret-16"),
    (
        "UPDATE users SET pw = SHA2(\"my-secret-17\", 256) WHERE id = 5",
        "my-secret-17",
    ),
    (
        "ALTER USER 'u'@'h' IDENTIFIED BY 'my-secret-18' RETAIN CURRENT PASSWORD",
        "my-secret-18",
    ),
    ("SELECT 'ünïcödé my-secret-19 😀'", "my-secret-19"),
    // `--` before a non-space is two minus signs to MySQL: the string goes on.
    ("SELECT a--'\nmy-secret-20\n' FROM t", "my-secret-20"),
    // An executable comment's text is SQL, strings and all.
    ("SELECT /*!40101 'x */ my-secret-21' */ 1", "my-secret-21"),
];

/// (statement, secret) read as neither: the generic dialect alone.
const GENERIC: &[(&str, &str)] = &[
    // Nested to PostgreSQL, not to MySQL: where the comment ends is unknown.
    ("SELECT /* /* */ x = 'a */ gen-secret-01 '", "gen-secret-01"),
    (
        "SELECT q'[Don't update gen-secret-02]' FROM dual",
        "gen-secret-02",
    ),
    ("SELECT a--'\ngen-secret-03\n' FROM t", "gen-secret-03"),
    // SQL to MySQL, a comment to others: whether the string is one is unknown.
    ("SELECT /*! 'a */ gen-secret-04 ' */ 1", "gen-secret-04"),
    ("SELECT /*M! 'a */ gen-secret-05 ' */ 1", "gen-secret-05"),
];

/// Whether any part of `secret` shows: the whole, or one of its words
/// (`secret` of `my-secret-21`) that the statement has nowhere else.
fn leaks(s: &sql::Statement, statement: &str, secret: &str) -> bool {
    let elsewhere = statement.replacen(secret, "", 1).to_lowercase();
    let words: Vec<String> = secret
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 4 && !elsewhere.contains(&w.to_lowercase()))
        .map(str::to_lowercase)
        .chain([secret.to_lowercase()])
        .collect();
    let shown = [&s.normalized, &s.verb]
        .into_iter()
        .chain(&s.tables)
        .map(|t| t.to_lowercase())
        .collect::<Vec<_>>();
    words
        .iter()
        .any(|w| shown.iter().any(|t| t.contains(w.as_str())))
}

#[test]
fn no_secret_survives_in_its_dialect_or_the_generic_one() {
    for (corpus, dialect) in [
        (POSTGRES, Dialect::Postgres),
        (MYSQL, Dialect::Mysql),
        (GENERIC, Dialect::Generic),
    ] {
        for &(statement, secret) in corpus {
            assert!(statement.contains(secret), "corpus: {statement}");
            for d in [dialect, Dialect::Generic] {
                let s = sql::parse(statement, d);
                assert!(
                    !leaks(&s, statement, secret),
                    "{d:?} leaked `{secret}` of `{statement}`: {s:?}"
                );
            }
        }
    }
}

#[test]
fn what_is_not_secret_is_kept() {
    let s = sql::parse(
        "SELECT o.id FROM \"Orders\" o JOIN items i ON i.o = o.id WHERE o.note = 'x'",
        Dialect::Postgres,
    );
    assert_eq!(s.tables, ["orders", "items"]);
    assert_eq!(
        s.normalized,
        "SELECT o.id FROM \"orders\" o JOIN items i ON i.o = o.id WHERE o.note = ?"
    );
    let s = sql::parse(
        "INSERT INTO `shop`.`Orders` (a) VALUES (\"x\") # done",
        Dialect::Mysql,
    );
    assert_eq!(s.tables, ["shop.orders"]);
    assert_eq!(s.normalized, "INSERT INTO `shop`.`orders` (a) VALUES (?)");
    // Names in any script are names, not literals.
    let s = sql::parse("SELECT prénom FROM clients_ünï", Dialect::Mysql);
    assert_eq!(s.tables, ["clients_ünï"]);
}

/// SQL-ish text that opens nothing it does not close.
fn noise() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "SELECT", "FROM t", "WHERE", "IN", "VALUES", ",", "(", ")", "=", "'x'", "'a''b'",
            "\"y\"", "`z`", "$1", "?", "1.5", "\\", "é", "😀", "/**/", "-", "#x\n",
        ]),
        0..8,
    )
    .prop_map(|words| words.join(" "))
}

proptest! {
    /// A secret in any quoting form, between any well-formed SQL-ish text,
    /// is never shown.
    #[test]
    fn quoted_secrets_never_shown(
        before in noise(),
        after in noise(),
        form in 0usize..11,
        dialect in prop::sample::select(vec![Dialect::Postgres, Dialect::Mysql, Dialect::Generic]),
    ) {
        let secret = "Zq7sEcReTzq7";
        let quoted = match form {
            0 => format!("'{secret}'"),
            1 => format!("\"{secret}\""),
            2 => format!("$${secret}$$"),
            3 => format!("$t$ {secret} $t$"),
            4 => format!("E'\\'{secret}'"),
            5 => format!("/* {secret} */"),
            6 => format!("-- {secret}\n"),
            7 => format!("# {secret}\n"),
            8 => format!("_utf8'{secret}'"),
            9 => format!("'a\\' {secret} '"),
            _ => format!("'it''s {secret}'"),
        };
        // Each form in the dialects that have it; the generic one has them all.
        let has_form = match form {
            1 | 7 | 8 => dialect != Dialect::Postgres,
            2..=4 => dialect != Dialect::Mysql,
            _ => true,
        };
        // `#x` is a comment only where `#` starts one: elsewhere it is an
        // operator and a word, which is fine. Everything else is balanced.
        let statement = format!("{before} {quoted} {after}");
        if has_form {
            let s = sql::parse(&statement, dialect);
            prop_assert!(!leaks(&s, &statement, secret), "{:?} leaked: {} -> {:?}", dialect, statement, s);
        }
    }
}
