//! SQL statements reduced to what the findings need: the statement with its
//! literals masked, its kind, and the tables it touches. A tokenizer, not a
//! full parser: it reads any dialect's common shapes and never fails.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Read,
    Write,
    Ddl,
    Transaction,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// The statement with literals replaced by `?` and whitespace folded.
    pub normalized: String,
    /// The first keyword, upper case (`SELECT`, `INSERT`, ...).
    pub verb: String,
    pub kind: StatementKind,
    /// Tables read or written, as written in the statement (lower case).
    pub tables: Vec<String>,
}

impl Statement {
    /// The tables, prefixed with `database`: all of them (PostgreSQL's
    /// `schema.table` lives in a database), or with `only_bare` only those not
    /// already qualified (MySQL's `db.table` names the database).
    pub fn qualified_tables(&self, database: Option<&str>, only_bare: bool) -> Vec<String> {
        self.tables
            .iter()
            .map(|t| match database {
                Some(db) if !(only_bare && t.contains('.')) => format!("{db}.{t}"),
                _ => t.clone(),
            })
            .collect()
    }
}

/// An operation name: `VERB t1,t2`, or the verb alone.
pub fn operation(verb: &str, tables: &[String]) -> String {
    if tables.is_empty() {
        verb.to_owned()
    } else {
        format!("{verb} {}", tables.join(","))
    }
}

/// The most characters of a statement kept (the rest is cut, marked `...`).
const MAX_STATEMENT: usize = 2048;
const MAX_TABLES: usize = 16;

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    /// A quoted identifier ("name" or `name`).
    Ident(String),
    Literal,
    Punct(char),
}

fn tokens(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push(Token::Literal);
            }
            b'"' | b'`' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != c {
                    i += 1;
                }
                out.push(Token::Ident(
                    String::from_utf8_lossy(&b[start..i.min(b.len())]).to_lowercase(),
                ));
                i += 1;
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // A bind parameter ($1): already a placeholder.
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Token::Literal);
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push(Token::Literal);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Token::Word(
                    String::from_utf8_lossy(&b[start..i]).into_owned(),
                ));
            }
            _ => {
                out.push(Token::Punct(c as char));
                i += 1;
            }
        }
    }
    out
}

fn normalized(tokens: &[Token]) -> String {
    let mut s = String::new();
    for t in tokens {
        let piece = match t {
            Token::Word(w) => w.clone(),
            Token::Ident(w) => format!("\"{w}\""),
            Token::Literal => "?".into(),
            Token::Punct(c) => c.to_string(),
        };
        let glue = matches!(t, Token::Punct(',' | ')' | '.' | ';')) || s.ends_with(['(', '.']);
        if !s.is_empty() && !glue {
            s.push(' ');
        }
        s.push_str(&piece);
        if s.len() > MAX_STATEMENT {
            s.truncate(MAX_STATEMENT);
            s.push_str("...");
            break;
        }
    }
    s
}

fn word(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) => Some(w.to_ascii_uppercase()),
        _ => None,
    }
}

/// A table name starting at `i`: `name`, `schema.name`, quoted parts.
fn table_at(t: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        match t.get(i)? {
            Token::Word(w) => {
                if name.is_empty() && is_keyword(w) {
                    return None;
                }
                name.push_str(&w.to_lowercase());
            }
            Token::Ident(w) => name.push_str(w),
            _ => return None,
        }
        i += 1;
        if matches!(t.get(i), Some(Token::Punct('.'))) {
            name.push('.');
            i += 1;
        } else {
            return Some((name, i));
        }
    }
}

fn is_keyword(w: &str) -> bool {
    const KW: &[&str] = &[
        "SELECT",
        "LATERAL",
        "ONLY",
        "IF",
        "NOT",
        "EXISTS",
        "WHERE",
        "SET",
        "VALUES",
        "ON",
        "USING",
        "AS",
        "UNNEST",
        "TABLE",
        "GENERATE_SERIES",
    ];
    KW.iter().any(|k| k.eq_ignore_ascii_case(w))
}

fn tables(t: &[Token]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < t.len() && out.len() < MAX_TABLES {
        let kw = word(t.get(i));
        let takes_list = matches!(kw.as_deref(), Some("FROM"));
        let takes_one = matches!(
            kw.as_deref(),
            Some("JOIN" | "INTO" | "UPDATE" | "TABLE" | "TRUNCATE" | "COPY")
        );
        i += 1;
        if !(takes_list || takes_one) {
            continue;
        }
        // DDL and TRUNCATE: skip IF [NOT] EXISTS, ONLY.
        while matches!(
            word(t.get(i)).as_deref(),
            Some("IF" | "NOT" | "EXISTS" | "ONLY")
        ) {
            i += 1;
        }
        while let Some((name, next)) = table_at(t, i) {
            // COPY ... FROM STDIN / TO STDOUT: not tables.
            if name == "stdin" || name == "stdout" {
                break;
            }
            if !out.contains(&name) {
                out.push(name);
            }
            i = next;
            if !takes_list {
                break;
            }
            // Skip an alias, then go on after a comma.
            if matches!(word(t.get(i)).as_deref(), Some("AS")) {
                i += 1;
            }
            if matches!(t.get(i), Some(Token::Word(w)) if !is_clause(w)) {
                i += 1;
            }
            if matches!(t.get(i), Some(Token::Punct(','))) {
                i += 1;
            } else {
                break;
            }
        }
    }
    out
}

fn is_clause(w: &str) -> bool {
    const CLAUSES: &[&str] = &[
        "WHERE",
        "JOIN",
        "LEFT",
        "RIGHT",
        "INNER",
        "OUTER",
        "FULL",
        "CROSS",
        "ON",
        "GROUP",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "HAVING",
        "UNION",
        "FOR",
        "RETURNING",
        "SET",
        "VALUES",
        "USING",
        "NATURAL",
        "WINDOW",
    ];
    CLAUSES.iter().any(|k| k.eq_ignore_ascii_case(w))
}

pub fn parse(sql: &str) -> Statement {
    let toks = tokens(sql);
    let verb = toks
        .iter()
        .find_map(|t| {
            if let Token::Word(w) = t {
                Some(w.to_ascii_uppercase())
            } else {
                None
            }
        })
        .unwrap_or_default();
    let kind =
        match verb.as_str() {
            "SELECT" | "SHOW" | "WITH" | "EXPLAIN" | "VALUES" => StatementKind::Read,
            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "UPSERT" | "REPLACE" | "COPY"
            | "TRUNCATE" => StatementKind::Write,
            "CREATE" | "ALTER" | "DROP" | "RENAME" | "COMMENT" | "GRANT" | "REVOKE" => {
                StatementKind::Ddl
            }
            "BEGIN" | "START" | "COMMIT" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" | "END"
            | "ABORT" => StatementKind::Transaction,
            _ => StatementKind::Other,
        };
    // A WITH ... that writes is a write.
    let kind = if verb == "WITH"
        && toks.iter().any(|t| matches!(t, Token::Word(w) if ["INSERT", "UPDATE", "DELETE"].iter().any(|k| k.eq_ignore_ascii_case(w))))
    {
        StatementKind::Write
    } else {
        kind
    };
    let tables = if matches!(kind, StatementKind::Transaction) {
        Vec::new()
    } else {
        tables(&toks)
    };
    Statement {
        normalized: normalized(&toks),
        verb,
        kind,
        tables,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_masked_tables_found() {
        let s = parse(
            "SELECT a.id, b.name FROM orders a JOIN public.customers b ON a.c = b.id WHERE a.total > 100 AND b.email = 'x@y.z'",
        );
        assert_eq!(s.kind, StatementKind::Read);
        assert_eq!(s.tables, ["orders", "public.customers"]);
        assert!(
            !s.normalized.contains("x@y.z") && !s.normalized.contains("100"),
            "{}",
            s.normalized
        );
        let s = parse("insert into \"Addresses\" (id, street) values ($1, 'Main St')");
        assert_eq!(
            (s.kind, s.tables.clone()),
            (StatementKind::Write, vec!["addresses".to_owned()])
        );
        assert_eq!(
            s.normalized,
            "insert into \"addresses\" (id, street) values (?, ?)"
        );
        let s = parse("UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 77;");
        assert_eq!(s.tables, ["pgbench_accounts"]);
        let s = parse("select * from a, b as bb, c where 1=1");
        assert_eq!(s.tables, ["a", "b", "c"]);
        assert_eq!(parse("BEGIN").kind, StatementKind::Transaction);
        assert_eq!(parse("COPY addresses FROM STDIN").tables, ["addresses"]);
        assert_eq!(
            parse("create table if not exists t1 (x int)").tables,
            ["t1"]
        );
        assert_eq!(parse("").verb, "");
        assert_eq!(parse("'unterminated").normalized, "?");
    }
}
