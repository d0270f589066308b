//! SQL statements reduced to what the findings need: the statement with its
//! literals masked, its kind, and the tables it touches. A tokenizer, not a
//! full parser: it reads any dialect's common shapes and never fails.
//!
//! Masking fails closed. Quoting is read as the statement's [`Dialect`]
//! reads it; where two readings could disagree (a backslash in a `'...'`
//! string, which one server setting makes an escape and another a plain
//! character) and the string would end at different places, everything
//! from the string on is masked. A byte the tokenizer cannot classify, an
//! unterminated string or comment, and comments themselves never reach the
//! output.

use serde::Serialize;

use crate::truncate_chars;

/// How a statement's quotes and comments are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `'...'` strings (`''` escapes; `E'...'` with backslash
    /// escapes), `"..."` identifiers, `$$...$$` and `$tag$...$tag$` dollar
    /// quoting, `--` and nested `/* */` comments.
    Postgres,
    /// MySQL and MariaDB: `'...'` and `"..."` strings (backslash escapes),
    /// `` `...` `` identifiers, `#`, `--` and `/* */` comments.
    Mysql,
    /// Unknown: every form above, each read the way that masks more
    /// (`"..."` is a string, `#` starts a comment, Oracle's `q'[...]'` is
    /// a string), and where servers read a form differently (a nested
    /// `/* */`, `--` before a non-space) everything from there on is masked.
    Generic,
}

impl Dialect {
    /// The dialect of an OpenTelemetry `db.system.name` (or `db.system`).
    pub fn of_system(system: &str) -> Self {
        match system {
            "postgresql" | "cockroachdb" => Self::Postgres,
            "mysql" | "mariadb" | "tidb" => Self::Mysql,
            _ => Self::Generic,
        }
    }

    fn double_quote_is_string(self) -> bool {
        self != Self::Postgres
    }

    fn hash_comments(self) -> bool {
        self != Self::Postgres
    }

    fn dollar_quotes(self) -> bool {
        self != Self::Mysql
    }
}

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
    /// The statement with literals replaced by `?`, lists of them folded to
    /// one, comments dropped and whitespace folded.
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

/// The most bytes of a statement read; the rest is not looked at.
const MAX_INPUT: usize = 64 * 1024;
/// The most bytes of a normalised statement kept (the rest is cut, marked `...`).
const MAX_STATEMENT: usize = 2048;
const MAX_TABLES: usize = 16;
/// The most bytes of one table name kept.
const MAX_TABLE_NAME: usize = 128;
/// Operators and separators kept as they are; any other byte outside a
/// word, a quoted run or a comment is masked.
const PUNCT: &[u8] = b"(),.;=<>!+-*/%&|^~:[]@{}";

#[derive(Clone, Debug, PartialEq)]
enum Token<'a> {
    Word(&'a str),
    /// A quoted identifier (`"name"`, `` `name` ``), lower case.
    Ident(String),
    /// A literal or anything masked: shown as `?`.
    Literal,
    Punct(u8),
}

/// Where a run quoted by `q` that opens at `open` ends (the index after its
/// closing quote); `q` doubled is an escape, and with `backslash` so is a
/// backslash before any byte. None when it never ends.
fn quoted_end(b: &[u8], open: usize, q: u8, backslash: bool) -> Option<usize> {
    let mut i = open + 1;
    while let Some(&c) = b.get(i) {
        if backslash && c == b'\\' {
            i += 2;
        } else if c == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return Some(i + 1);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// A string quoted by `q` opening at `open`: where it ends when both readings
/// of a backslash agree; None (mask the rest) when they do not, or when it
/// never ends.
fn string_end(b: &[u8], open: usize, q: u8) -> Option<usize> {
    let plain = quoted_end(b, open, q, false)?;
    let escaped = quoted_end(b, open, q, true)?;
    (plain == escaped).then_some(plain)
}

/// The end of a `/* */` comment opening at `open` (nested when the dialect
/// nests them), or the end of the input.
fn block_comment_end(b: &[u8], open: usize, nested: bool) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        if b.get(i..i + 2) == Some(b"/*") && (nested || depth == 0) {
            depth += 1;
            i += 2;
        } else if b.get(i..i + 2) == Some(b"*/") {
            depth = depth.saturating_sub(1);
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The end of a dollar-quote tag (`$$` or `$tag$`) opening at `open`.
fn dollar_tag_end(b: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if b.get(i).copied().is_some_and(is_word_start) {
        while b
            .get(i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80)
        {
            i += 1;
        }
    }
    (b.get(i) == Some(&b'$')).then_some(i + 1)
}

/// A literal prefix: `E'..'`, `N'..'`, `B'..'`, `X'..'`, `U&'..'`, `_utf8mb4'..'`.
fn is_literal_prefix(w: &str) -> bool {
    matches!(w, "E" | "e" | "N" | "n" | "B" | "b" | "X" | "x") || w.starts_with('_')
}

fn tokens(sql: &str, dialect: Dialect) -> Vec<Token<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // Masks everything from here on: a run the tokenizer cannot read safely.
    macro_rules! mask_rest {
        () => {{
            out.push(Token::Literal);
            break;
        }};
    }
    while let Some(&c) = b.get(i) {
        match c {
            b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                // MySQL reads `--` as a comment only before a space or a
                // control character; elsewhere it is two minus signs.
                let spaced = b.get(i + 2).is_none_or(|&c| c <= b' ');
                if !spaced && dialect == Dialect::Mysql {
                    out.push(Token::Punct(b'-'));
                    i += 1;
                    continue;
                }
                if !spaced && dialect == Dialect::Generic {
                    // A comment to some servers, not to others: masked.
                    mask_rest!()
                }
                while b.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'#' if dialect.hash_comments() => {
                while b.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*')
                && dialect == Dialect::Mysql
                && b.get(i + 2) == Some(&b'!') =>
            {
                // MySQL's executable comment: its text is SQL, read as such
                // (its closing `*/` is passed over below).
                i += 3;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            b'*' if dialect == Dialect::Mysql && b.get(i + 1) == Some(&b'/') => i += 2,
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // One scan per comment, each past where it ends: a flat
                // dialect never computes the nested end (which may run to
                // the end of the input for every `/*`).
                i = match dialect {
                    Dialect::Mysql => block_comment_end(b, i, false),
                    Dialect::Postgres => block_comment_end(b, i, true),
                    Dialect::Generic => {
                        let nested = block_comment_end(b, i, true);
                        if nested != block_comment_end(b, i, false)
                            || b.get(i + 2) == Some(&b'!')
                            || b.get(i + 2..i + 4) == Some(b"M!")
                        {
                            // Where the comment ends, or whether it is
                            // SQL (`/*!`, `/*M!`), depends on the server:
                            // masked.
                            mask_rest!()
                        }
                        nested
                    }
                };
            }
            b'\'' => match string_end(b, i, c) {
                Some(end) => {
                    out.push(Token::Literal);
                    i = end;
                }
                None => mask_rest!(),
            },
            b'"' if dialect.double_quote_is_string() => match string_end(b, i, c) {
                Some(end) => {
                    out.push(Token::Literal);
                    i = end;
                }
                None => mask_rest!(),
            },
            b'"' | b'`' => match quoted_end(b, i, c, false) {
                Some(end) => {
                    let inner = sql.get(i + 1..end - 1).unwrap_or_default();
                    let q = char::from(c);
                    out.push(Token::Ident(
                        inner
                            .replace(&format!("{q}{q}"), &q.to_string())
                            .to_lowercase(),
                    ));
                    i = end;
                }
                None => mask_rest!(),
            },
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // A bind parameter ($1): already a placeholder.
                i += 1;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                out.push(Token::Literal);
            }
            b'$' if dialect.dollar_quotes() => {
                let Some((tag, body)) =
                    dollar_tag_end(b, i).and_then(|end| Some((b.get(i..end)?, b.get(end..)?)))
                else {
                    mask_rest!()
                };
                let tag_end = i + tag.len();
                match body.windows(tag.len()).position(|w| w == tag) {
                    Some(p) => {
                        out.push(Token::Literal);
                        i = tag_end + p + tag.len();
                    }
                    None => mask_rest!(),
                }
            }
            b'?' => {
                out.push(Token::Literal);
                i += 1;
            }
            b'0'..=b'9' => {
                while b
                    .get(i)
                    .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'.')
                {
                    i += 1;
                }
                out.push(Token::Literal);
            }
            _ if is_word_start(c) => {
                let start = i;
                while b.get(i).copied().is_some_and(is_word_byte) {
                    i += 1;
                }
                let word = sql.get(start..i).unwrap_or_default();
                let next = b.get(i).copied();
                if next == Some(b'\'') && matches!(word, "E" | "e") {
                    // E'...' always takes backslash escapes.
                    match quoted_end(b, i, b'\'', true) {
                        Some(end) => {
                            out.push(Token::Literal);
                            i = end;
                        }
                        None => mask_rest!(),
                    }
                    continue;
                }
                let quote_next =
                    next == Some(b'\'') || next == Some(b'"') && dialect.double_quote_is_string();
                if quote_next && is_literal_prefix(word) {
                    // The string that follows is read as a literal of its own.
                    continue;
                }
                if dialect == Dialect::Generic
                    && matches!(word, "q" | "Q" | "nq" | "NQ" | "Nq" | "nQ")
                    && next == Some(b'\'')
                {
                    // Oracle's q'[...]': the delimiter after the quote, its
                    // pair before the closing quote.
                    let close = match b.get(i + 1) {
                        Some(b'[') => b']',
                        Some(b'(') => b')',
                        Some(b'{') => b'}',
                        Some(b'<') => b'>',
                        Some(&c) => c,
                        None => mask_rest!(),
                    };
                    let body = b.get(i + 2..).unwrap_or_default();
                    match body.windows(2).position(|w| w == [close, b'\'']) {
                        Some(p) => {
                            out.push(Token::Literal);
                            i += 2 + p + 2;
                        }
                        None => mask_rest!(),
                    }
                    continue;
                }
                if matches!(word, "U" | "u") && b.get(i) == Some(&b'&') {
                    // U&'...' and U&"...": the string or identifier follows.
                    i += 1;
                    continue;
                }
                out.push(Token::Word(word));
            }
            _ if PUNCT.contains(&c) || c == b'#' => {
                out.push(Token::Punct(c));
                i += 1;
            }
            // A byte with no place in SQL: masked, whatever it is.
            _ => {
                out.push(Token::Literal);
                i += 1;
            }
        }
    }
    out
}

/// Whether a token may stand in a list of values that folds to one `?`.
fn is_value(t: &Token) -> bool {
    match t {
        Token::Literal | Token::Punct(b',' | b'-' | b'+') => true,
        Token::Word(w) => ["NULL", "TRUE", "FALSE", "DEFAULT"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(w)),
        _ => false,
    }
}

/// The end (index after `)`) of a parenthesised list of values only, starting at `open`.
fn value_list_end(t: &[Token], open: usize) -> Option<usize> {
    if t.get(open) != Some(&Token::Punct(b'(')) {
        return None;
    }
    let mut i = open + 1;
    while let Some(tok) = t.get(i) {
        if *tok == Token::Punct(b')') {
            return (i > open + 1).then_some(i + 1);
        }
        if !is_value(tok) {
            return None;
        }
        i += 1;
    }
    None
}

/// Folds `IN (?, ?, ...)` to `IN (?)` and `VALUES (?, ?), (?, ?)` to
/// `VALUES (?)`: the number of values is not part of what a statement does.
fn fold_lists(t: Vec<Token<'_>>) -> Vec<Token<'_>> {
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while let Some(tok) = t.get(i) {
        let opens_list = matches!(tok, Token::Word(w) if w.eq_ignore_ascii_case("IN") || w.eq_ignore_ascii_case("VALUES"));
        if let (true, Some(mut end)) = (opens_list, value_list_end(&t, i + 1)) {
            out.push(tok.clone());
            out.extend([Token::Punct(b'('), Token::Literal, Token::Punct(b')')]);
            // Further tuples of a multi-row VALUES.
            while t.get(end) == Some(&Token::Punct(b',')) {
                match value_list_end(&t, end + 1) {
                    Some(next) => end = next,
                    None => break,
                }
            }
            i = end;
            continue;
        }
        i += 1;
        out.push(tok.clone());
    }
    out
}

fn normalized(tokens: &[Token], dialect: Dialect) -> String {
    let mut s = String::new();
    let ident_quote = if dialect == Dialect::Mysql { '`' } else { '"' };
    for t in tokens {
        let glue = matches!(t, Token::Punct(b',' | b')' | b'.' | b';')) || s.ends_with(['(', '.']);
        if !s.is_empty() && !glue {
            s.push(' ');
        }
        match t {
            Token::Word(w) => s.push_str(w),
            Token::Ident(w) => {
                s.push(ident_quote);
                for ch in w.chars() {
                    if ch == ident_quote {
                        s.push(ch);
                    }
                    s.push(ch);
                }
                s.push(ident_quote);
            }
            Token::Literal => s.push('?'),
            Token::Punct(c) => s.push(char::from(*c)),
        }
        if s.len() > MAX_STATEMENT {
            truncate_chars(&mut s, MAX_STATEMENT);
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
        if matches!(t.get(i), Some(Token::Punct(b'.'))) {
            name.push('.');
            i += 1;
        } else {
            truncate_chars(&mut name, MAX_TABLE_NAME);
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
            if !takes_list || out.len() >= MAX_TABLES {
                break;
            }
            // Skip an alias, then go on after a comma.
            if matches!(word(t.get(i)).as_deref(), Some("AS")) {
                i += 1;
            }
            if matches!(t.get(i), Some(Token::Word(w)) if !is_clause(w)) {
                i += 1;
            }
            if matches!(t.get(i), Some(Token::Punct(b','))) {
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

/// Reads one statement as `dialect` quotes it.
pub fn parse(sql: &str, dialect: Dialect) -> Statement {
    let input = sql.get(..sql.floor_char_boundary(MAX_INPUT)).unwrap_or(sql);
    let mut toks = tokens(input, dialect);
    if input.len() < sql.len() {
        // What was not read is not shown either.
        toks.push(Token::Literal);
    }
    let toks = fold_lists(toks);
    let verb = toks
        .iter()
        .find_map(|t| match t {
            Token::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        })
        .unwrap_or_default();
    let mut verb = verb;
    truncate_chars(&mut verb, 32);
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
        normalized: normalized(&toks, dialect),
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
        let pg = |s| parse(s, Dialect::Postgres);
        let s = pg(
            "SELECT a.id, b.name FROM orders a JOIN public.customers b ON a.c = b.id WHERE a.total > 100 AND b.email = 'x@y.z'",
        );
        assert_eq!(s.kind, StatementKind::Read);
        assert_eq!(s.tables, ["orders", "public.customers"]);
        assert!(
            !s.normalized.contains("x@y.z") && !s.normalized.contains("100"),
            "{}",
            s.normalized
        );
        let s = pg("insert into \"Addresses\" (id, street) values ($1, 'Main St')");
        assert_eq!(
            (s.kind, s.tables.clone()),
            (StatementKind::Write, vec!["addresses".to_owned()])
        );
        assert_eq!(
            s.normalized,
            "insert into \"addresses\" (id, street) values (?)"
        );
        let s = pg("UPDATE pgbench_accounts SET abalance = abalance + -4 WHERE aid = 77;");
        assert_eq!(s.tables, ["pgbench_accounts"]);
        let s = pg("select * from a, b as bb, c where 1=1");
        assert_eq!(s.tables, ["a", "b", "c"]);
        assert_eq!(pg("BEGIN").kind, StatementKind::Transaction);
        assert_eq!(pg("COPY addresses FROM STDIN").tables, ["addresses"]);
        assert_eq!(pg("create table if not exists t1 (x int)").tables, ["t1"]);
        assert_eq!(pg("").verb, "");
        assert_eq!(pg("'unterminated").normalized, "?");
    }

    #[test]
    fn lists_of_values_fold_to_one() {
        let s = parse(
            "SELECT * FROM t WHERE id IN (1, 2, -3, ?) AND x IN (SELECT y FROM u)",
            Dialect::Mysql,
        );
        assert_eq!(
            s.normalized,
            "SELECT * FROM t WHERE id IN (?) AND x IN (SELECT y FROM u)"
        );
        assert_eq!(s.tables, ["t", "u"]);
        let s = parse(
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, NULL), ($1, $2)",
            Dialect::Postgres,
        );
        assert_eq!(s.normalized, "INSERT INTO t (a, b) VALUES (?)");
    }

    #[test]
    fn long_non_ascii_statements_are_cut_on_a_character() {
        // Every byte offset of the cut, with a 2-, 3- and 4-byte character.
        for pad in 0..4 {
            for name in ["é", "€", "𝄞"] {
                let column = format!("{}{}", "x".repeat(pad), name.repeat(1200));
                let s = parse(&format!("SELECT {column} FROM t"), Dialect::Postgres);
                assert!(s.normalized.ends_with("..."));
                assert!(s.normalized.len() <= MAX_STATEMENT + 3);
            }
        }
        let long = format!("SELECT '{}' FROM t", "ü".repeat(MAX_INPUT));
        let s = parse(&long, Dialect::Mysql);
        assert!(!s.normalized.contains('ü'), "{}", s.normalized);
    }

    #[test]
    fn dialects_read_quotes_their_way() {
        // PostgreSQL: "..." names a table; MySQL: it is a string.
        assert_eq!(
            parse("SELECT 1 FROM \"Orders\"", Dialect::Postgres).tables,
            ["orders"]
        );
        let s = parse("SELECT * FROM `Orders` WHERE x = \"pw\"", Dialect::Mysql);
        assert_eq!(s.tables, ["orders"]);
        assert_eq!(s.normalized, "SELECT * FROM `orders` WHERE x = ?");
        // A PostgreSQL "#" is an operator, a MySQL one a comment.
        assert_eq!(
            parse("SELECT a # b FROM t", Dialect::Postgres).normalized,
            "SELECT a # b FROM t"
        );
        assert_eq!(
            parse("SELECT a # b FROM t", Dialect::Mysql).normalized,
            "SELECT a"
        );
    }
}
