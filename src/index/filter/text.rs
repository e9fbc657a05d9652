//! The compact form of a filter, for a query string (`GET …?filter=`):
//!
//! ```text
//! category=shoes|bags,price>=10,price<50
//! (color=red OR color=blue) AND NOT EXISTS discontinued
//! brand!="Acme, Inc."
//! ```
//!
//! - A test is `field=value`, `field!=value`, `field=a|b|c` (any of), `field!=a|b` (none of),
//!   `field>n`, `field>=n`, `field<n`, `field<=n`, or `EXISTS field`.
//! - Tests combine with `,` or `AND`, `OR` (binding looser than `AND`), `NOT`, and parentheses.
//! - A name or value is bare (no spaces or any of `,|()"=!<>`) or double-quoted (`\"` and `\\`
//!   inside). `AND`, `OR`, `NOT` and `EXISTS` are keywords only bare and in capitals.

use super::{Field, Filter, FilterError, Range, MAX_TEXT};

/// Parses and checks a compact filter.
pub fn parse(text: &str) -> Result<Filter, FilterError> {
    if text.len() > MAX_TEXT {
        return Err(FilterError::new(format!(
            "the filter is {} bytes; at most {MAX_TEXT}",
            text.len()
        )));
    }
    let tokens = tokens(text)?;
    if tokens.is_empty() {
        return Err(FilterError::new("the filter is empty"));
    }
    let mut p = Parser { tokens, at: 0 };
    let filter = p.or(0)?;
    if let Some(t) = p.peek() {
        return Err(FilterError::new(format!(
            "unexpected {} after a complete filter",
            t.shown()
        )));
    }
    let filter = filter.simplified();
    filter.check()?;
    Ok(filter)
}

/// Parses a filter given as text (a query string, a command-line flag): the compact form, or
/// the JSON form when it starts with `{`.
pub fn parse_compact_or_json(text: &str) -> Result<Filter, FilterError> {
    if text.trim_start().starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| FilterError(format!("the filter is not valid JSON: {e}")))?;
        super::json::parse(&value)
    } else {
        parse(text)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A name or value, and whether it was quoted.
    Word(String, bool),
    Op(&'static str),
    Comma,
    Pipe,
    Open,
    Close,
}

impl Token {
    fn shown(&self) -> String {
        match self {
            Token::Word(w, _) => format!("{w:?}"),
            Token::Op(o) => format!("'{o}'"),
            Token::Comma => "','".into(),
            Token::Pipe => "'|'".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
        }
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self, Token::Word(w, false) if w == k)
    }
}

const SPECIAL: &str = ",|()\"=!<>";

fn tokens(text: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices>, want: char| {
            if chars.peek().map(|&(_, c)| c) == Some(want) {
                chars.next();
                true
            } else {
                false
            }
        };
        out.push(match c {
            ',' => Token::Comma,
            '|' => Token::Pipe,
            '(' => Token::Open,
            ')' => Token::Close,
            '=' => Token::Op("="),
            '!' if next_is(&mut chars, '=') => Token::Op("!="),
            '!' => {
                return Err(FilterError::new(format!(
                    "'!' at byte {i} must be followed by '=' (for not, write NOT)"
                )))
            }
            '<' if next_is(&mut chars, '=') => Token::Op("<="),
            '<' => Token::Op("<"),
            '>' if next_is(&mut chars, '=') => Token::Op(">="),
            '>' => Token::Op(">"),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, e @ ('"' | '\\'))) => s.push(e),
                            _ => {
                                return Err(FilterError::new(format!(
                                "in the quoted text from byte {i}, '\\' escapes only '\"' and '\\'"
                            )))
                            }
                        },
                        Some((_, c)) => s.push(c),
                        None => {
                            return Err(FilterError::new(format!(
                                "the quote at byte {i} is not closed"
                            )))
                        }
                    }
                }
                Token::Word(s, true)
            }
            c => {
                let mut s = String::from(c);
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() || SPECIAL.contains(c) {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                Token::Word(s, false)
            }
        });
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn depth(depth: usize) -> Result<usize, FilterError> {
        if depth > super::MAX_DEPTH {
            return Err(FilterError::new(format!(
                "the filter nests deeper than {} levels",
                super::MAX_DEPTH
            )));
        }
        Ok(depth + 1)
    }

    fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let depth = Self::depth(depth)?;
        let mut any = vec![self.and(depth)?];
        while self.peek().is_some_and(|t| t.keyword("OR")) {
            self.next();
            any.push(self.and(depth)?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Filter::Or(any)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut all = vec![self.unary(depth)?];
        while self
            .peek()
            .is_some_and(|t| *t == Token::Comma || t.keyword("AND"))
        {
            self.next();
            all.push(self.unary(depth)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Filter::And(all)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        match self.next() {
            Some(t) if t.keyword("NOT") => {
                Ok(Filter::Not(Box::new(self.unary(Self::depth(depth)?)?)))
            }
            Some(t) if t.keyword("EXISTS") => match self.next() {
                Some(Token::Word(name, _)) => Ok(Filter::Exists(Field::parse(&name)?)),
                other => Err(expected("a field name after EXISTS", other)),
            },
            Some(Token::Open) => {
                let inner = self.or(depth)?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    other => Err(expected("')'", other)),
                }
            }
            Some(Token::Word(name, _)) => self.test(Field::parse(&name)?),
            other => Err(expected("a test such as color=red", other)),
        }
    }

    fn test(&mut self, field: Field) -> Result<Filter, FilterError> {
        let op = match self.next() {
            Some(Token::Op(op)) => op,
            other => Err(expected(&format!("an operator after {field}"), other))?,
        };
        let value = |p: &mut Parser| match p.next() {
            Some(Token::Word(v, _)) => Ok(v),
            other => Err(expected(&format!("a value after {field}{op}"), other)),
        };
        let first = value(self)?;
        if op == "=" || op == "!=" {
            let mut values = vec![first];
            while self.peek() == Some(&Token::Pipe) {
                self.next();
                values.push(value(self)?);
            }
            let test = if values.len() == 1 {
                Filter::Eq(field, values.remove(0))
            } else {
                Filter::In(field, values)
            };
            return Ok(if op == "=" {
                test
            } else {
                Filter::Not(Box::new(test))
            });
        }
        let n: f64 = first
            .trim()
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .ok_or_else(|| {
                FilterError::new(format!("{field}{op} takes a number, got {first:?}"))
            })?;
        let mut range = Range::default();
        match op {
            ">" => range.lower = Some((n, false)),
            ">=" => range.lower = Some((n, true)),
            "<" => range.upper = Some((n, false)),
            _ => range.upper = Some((n, true)),
        }
        Ok(Filter::Range(field, range))
    }
}

fn expected(what: &str, got: Option<Token>) -> FilterError {
    match got {
        Some(t) => FilterError::new(format!("expected {what}, got {}", t.shown())),
        None => FilterError::new(format!("expected {what}, but the filter ends")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> Field {
        Field::Metadata(name.into())
    }

    fn range(lower: Option<(f64, bool)>, upper: Option<(f64, bool)>) -> Range {
        Range { lower, upper }
    }

    #[test]
    fn tests_and_their_combinations() {
        assert_eq!(
            parse("category=shoes|bags,price>=10,price<50").unwrap(),
            Filter::And(vec![
                Filter::In(Field::Category, vec!["shoes".into(), "bags".into()]),
                Filter::Range(
                    meta("price"),
                    range(Some((10.0, true)), Some((50.0, false)))
                ),
            ]),
            "the two bounds of price are one range"
        );
        assert_eq!(
            parse("(color=red OR color=blue) AND NOT EXISTS discontinued").unwrap(),
            Filter::And(vec![
                Filter::Or(vec![
                    Filter::Eq(meta("color"), "red".into()),
                    Filter::Eq(meta("color"), "blue".into()),
                ]),
                Filter::Not(Box::new(Filter::Exists(meta("discontinued")))),
            ])
        );
        assert_eq!(
            parse(r#"brand!="Acme, Inc. \"the\" best""#).unwrap(),
            Filter::Not(Box::new(Filter::Eq(
                meta("brand"),
                r#"Acme, Inc. "the" best"#.into()
            )))
        );
        assert_eq!(
            parse("a=1 OR b=2, c=3").unwrap(),
            Filter::Or(vec![
                Filter::Eq(meta("a"), "1".into()),
                Filter::And(vec![
                    Filter::Eq(meta("b"), "2".into()),
                    Filter::Eq(meta("c"), "3".into()),
                ]),
            ]),
            "AND binds tighter than OR"
        );
        assert_eq!(
            parse(r#""OR"="NOT""#).unwrap(),
            Filter::Eq(meta("OR"), "NOT".into()),
            "quoted keywords are words"
        );
        assert_eq!(
            parse("size!=40|41").unwrap(),
            Filter::Not(Box::new(Filter::In(
                meta("size"),
                vec!["40".into(), "41".into()]
            )))
        );
        assert_eq!(
            parse("w<=2.5").unwrap(),
            Filter::Range(meta("w"), range(None, Some((2.5, true))))
        );
        assert_eq!(
            parse("r>-3").unwrap(),
            Filter::Range(meta("r"), range(Some((-3.0, false)), None))
        );
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        let err = |t: &str| parse(t).unwrap_err().0;
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("color").contains("expected an operator after color"));
        assert!(err("color=").contains("a value after color="));
        assert!(err("price>ten").contains("takes a number"));
        assert!(err("(a=1").contains("expected ')'"));
        assert!(err("a=1)").contains("unexpected ')'"));
        assert!(err("a=1 b=2").contains("unexpected \"b\""));
        assert!(err("!a=1").contains("NOT"));
        assert!(err("a=\"x").contains("not closed"));
        assert!(err("a=\"\\n\"").contains("escapes only"));
        assert!(err("EXISTS").contains("field name after EXISTS"));
        assert!(err("a=1,").contains("ends"));
        assert!(err(&"x".repeat(MAX_TEXT + 1)).contains("at most"));
        assert!(err(&format!("{}a=1{}", "(".repeat(40), ")".repeat(40))).contains("deeper"));
        assert!(err(&"NOT ".repeat(40)).contains("deeper"));
    }
}
