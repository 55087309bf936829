//! Warnings about new features that nearly duplicate existing ones.
//!
//! `larder apply` warns (it never refuses) when a *new* feature — a `view:feature` of the repo
//! that the recorded registry does not hold; every feature on the first apply — looks like
//! another feature that exists after the apply (in any view, the new feature's own view
//! included). Two existing features are never compared, so re-applying an unchanged repo
//! warns about nothing. Each pair is reported once, by the first rule that matches:
//!
//! - **Same expression.** Both features are computed by a select-list item (`expr AS name`)
//!   of their views' SQL transformations, their views read the same source, and the two
//!   normalized expressions (lowercase, whitespace collapsed, no spaces around punctuation,
//!   table qualifiers such as `t.` dropped) are equal or have a similarity of at least
//!   [`EXPRESSION_SIMILARITY_THRESHOLD`]. Bare columns (`age`, `t.age`) and literals are
//!   skipped: only expressions with a function call, an operator or a `CASE` count. SQL that
//!   cannot be read is skipped quietly.
//! - **Similar name.** The names, lowercased and without `_` and `-`, have a similarity of at
//!   least [`NAME_SIMILARITY_THRESHOLD`]. Identical names in different views warn too.
//!
//! Similarity is `1 - levenshtein(a, b) / max(len(a), len(b))`, over characters. Names or
//! expressions whose numbers differ are never similar: the quantities — a run of digits with
//! the letters right after it, `7d`, `1h`, `30` — must be the same, in the same order, so
//! `clicks_7d` and `clicks_30d`, or `interval '7 days'` and `interval '30 days'`, are
//! different windows rather than duplicates.

use std::collections::{BTreeMap, BTreeSet};

use crate::Registry;

/// The least name similarity that is worth a warning.
pub(super) const NAME_SIMILARITY_THRESHOLD: f64 = 0.85;

/// The least similarity of two SQL expressions that is worth a warning.
pub(super) const EXPRESSION_SIMILARITY_THRESHOLD: f64 = 0.9;

/// How many characters of an expression a warning shows.
const SHOWN_EXPRESSION_CHARS: usize = 40;

/// One feature of the desired registry, with what the comparison needs.
struct Candidate<'a> {
    view: &'a str,
    name: &'a str,
    source: &'a str,
    normalized_name: String,
    name_quantities: Vec<String>,
    /// The normalized expression computing it, when it is computed by one.
    expression: Option<String>,
    expression_quantities: Vec<String>,
    is_new: bool,
}

/// The warnings about the new features of `desired` (those `recorded` does not hold), one
/// message each without a `warning: ` prefix, in the order of views and features.
pub(super) fn similarity_warnings(recorded: &Registry, desired: &Registry) -> Vec<String> {
    let mut candidates = Vec::new();
    for (view_name, view) in &desired.feature_views {
        let expressions: BTreeMap<String, String> = view
            .transformation
            .as_deref()
            .map(select_items)
            .unwrap_or_default()
            .into_iter()
            .filter(|item| is_computed(&item.expression))
            .rev() // the first item of a name wins
            .map(|item| (item.name, item.expression))
            .collect();
        let recorded_view = recorded.feature_views.get(view_name);
        for feature in &view.features {
            let expression = expressions.get(&feature.name.to_lowercase()).cloned();
            let is_new = recorded_view
                .is_none_or(|recorded_view| recorded_view.feature_index(&feature.name).is_none());
            candidates.push(Candidate {
                view: view_name,
                name: &feature.name,
                source: &view.source,
                normalized_name: normalize_name(&feature.name),
                name_quantities: quantities(&feature.name.to_lowercase()),
                expression_quantities: expression.as_deref().map(quantities).unwrap_or_default(),
                expression,
                is_new,
            });
        }
    }

    let mut warnings = Vec::new();
    let mut reported: BTreeSet<(usize, usize)> = BTreeSet::new();
    for (index, new) in candidates.iter().enumerate() {
        if !new.is_new {
            continue;
        }
        for (other_index, other) in candidates.iter().enumerate() {
            let pair = (index.min(other_index), index.max(other_index));
            if other_index == index || reported.contains(&pair) {
                continue;
            }
            if let Some(warning) = compare(new, other) {
                reported.insert(pair);
                warnings.push(warning);
            }
        }
    }
    warnings
}

/// The warning about `new` looking like `other`, if it does.
fn compare(new: &Candidate<'_>, other: &Candidate<'_>) -> Option<String> {
    if let (Some(new_expression), Some(other_expression)) = (&new.expression, &other.expression)
        && new.source == other.source
        && new.expression_quantities == other.expression_quantities
        && let Some(similarity) = similarity_at_least(
            new_expression,
            other_expression,
            EXPRESSION_SIMILARITY_THRESHOLD,
        )
    {
        let adverb = if new_expression == other_expression {
            ""
        } else {
            "nearly "
        };
        return Some(format!(
            "feature {}:{} computes {adverb}the same expression as {}:{} ({}, similarity {}); reuse it or rename",
            new.view,
            new.name,
            other.view,
            other.name,
            shorten(new_expression),
            two_decimals(similarity),
        ));
    }
    if new.name_quantities == other.name_quantities
        && let Some(similarity) = similarity_at_least(
            &new.normalized_name,
            &other.normalized_name,
            NAME_SIMILARITY_THRESHOLD,
        )
    {
        return Some(format!(
            "feature {}:{} looks like {}:{} (name similarity {}); reuse it or rename",
            new.view,
            new.name,
            other.view,
            other.name,
            two_decimals(similarity)
        ));
    }
    None
}

/// The similarity of `a` and `b` when it is at least `threshold`; skips the distance when the
/// lengths alone rule it out.
fn similarity_at_least(a: &str, b: &str, threshold: f64) -> Option<f64> {
    let (a_length, b_length) = (a.chars().count(), b.chars().count());
    let longest = a_length.max(b_length);
    if longest > 0 {
        let bound = 1.0 - a_length.abs_diff(b_length) as f64 / longest as f64;
        if bound < threshold {
            return None;
        }
    }
    let similarity = similarity(a, b);
    (similarity >= threshold).then_some(similarity)
}

/// A similarity with two decimals, rounded down so that only equal texts show `1.00`.
fn two_decimals(similarity: f64) -> String {
    format!("{:.2}", ((similarity * 100.0) + 1e-9).floor() / 100.0)
}

/// An expression cut to [`SHOWN_EXPRESSION_CHARS`] characters, with `...` when cut.
fn shorten(expression: &str) -> String {
    if expression.chars().count() <= SHOWN_EXPRESSION_CHARS {
        return expression.to_string();
    }
    let mut shown: String = expression.chars().take(SHOWN_EXPRESSION_CHARS).collect();
    shown.push_str("...");
    shown
}

/// The Levenshtein distance of two strings, in characters (insertions, deletions and
/// substitutions of one character each cost 1).
pub(super) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, a_char) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// `1 - levenshtein(a, b) / max(len(a), len(b))`: 1.0 for equal strings (two empty ones
/// included), 0.0 for nothing in common.
pub(super) fn similarity(a: &str, b: &str) -> f64 {
    let longest = a.chars().count().max(b.chars().count());
    if longest == 0 {
        return 1.0;
    }
    1.0 - levenshtein(a, b) as f64 / longest as f64
}

/// A feature name as the name rule compares it: lowercase, without `_` and `-`.
pub(super) fn normalize_name(name: &str) -> String {
    name.chars()
        .filter(|character| *character != '_' && *character != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The quantities in a (lowercase) text, in order: each run of ASCII digits with the ASCII
/// letters right after it (`clicks_7d` -> `7d`, `interval '30 days'` -> `30`).
pub(super) fn quantities(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        if !character.is_ascii_digit() {
            continue;
        }
        let mut quantity = String::from(character);
        while let Some(next) = characters.next_if(char::is_ascii_digit) {
            quantity.push(next);
        }
        while let Some(next) = characters.next_if(char::is_ascii_alphabetic) {
            quantity.push(next);
        }
        found.push(quantity);
    }
    found
}

/// One output column of a SELECT: its name and its normalized expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SelectItem {
    /// The output column's name, lowercase: the alias, or the column of a bare column.
    pub(super) name: String,
    /// The expression, normalized: lowercase outside string literals, comments dropped,
    /// whitespace collapsed, no spaces around punctuation, table qualifiers dropped
    /// (`T.Clicks` -> `clicks`).
    pub(super) expression: String,
}

/// The named items of the top-level select list of `sql` (the first SELECT outside
/// parentheses, up to its FROM). Items without a name (`count(*)` without an alias, `*`) are
/// left out; SQL that cannot be read gives none.
pub(super) fn select_items(sql: &str) -> Vec<SelectItem> {
    let Some(tokens) = tokenize(sql) else {
        return Vec::new();
    };
    let mut depth = 0usize;
    let mut start = None;
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct('(' | '[') => depth += 1,
            Token::Punct(')' | ']') => depth = depth.saturating_sub(1),
            Token::Word(word) if depth == 0 && word == "select" => {
                start = Some(index + 1);
                break;
            }
            _ => {}
        }
    }
    let Some(mut start) = start else {
        return Vec::new();
    };
    if matches!(tokens.get(start), Some(Token::Word(word)) if word == "distinct" || word == "all") {
        start += 1;
    }
    let mut items = Vec::new();
    let mut item: Vec<Token> = Vec::new();
    let mut depth = 0usize;
    for token in tokens.into_iter().skip(start) {
        match &token {
            Token::Punct('(' | '[') => depth += 1,
            Token::Word(word) if word == "case" => depth += 1,
            Token::Punct(')' | ']') => depth = depth.saturating_sub(1),
            Token::Word(word) if word == "end" => depth = depth.saturating_sub(1),
            Token::Punct(',') if depth == 0 => {
                items.extend(select_item(&std::mem::take(&mut item)));
                continue;
            }
            Token::Punct(';') if depth == 0 => break,
            Token::Word(word) if depth == 0 && ends_select_list(word) => break,
            _ => {}
        }
        item.push(token);
    }
    items.extend(select_item(&item));
    items
}

/// Words that end a select list at depth 0.
fn ends_select_list(word: &str) -> bool {
    matches!(
        word,
        "from"
            | "where"
            | "group"
            | "having"
            | "order"
            | "limit"
            | "union"
            | "intersect"
            | "except"
            | "window"
            | "qualify"
    )
}

/// Keywords that are never an alias or a bare column.
fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "and"
            | "or"
            | "not"
            | "is"
            | "null"
            | "true"
            | "false"
            | "case"
            | "when"
            | "then"
            | "else"
            | "end"
            | "in"
            | "like"
            | "between"
            | "distinct"
            | "as"
            | "interval"
            | "asc"
            | "desc"
    )
}

/// The name and normalized expression of one select-list item, if it has a name.
fn select_item(tokens: &[Token]) -> Option<SelectItem> {
    let name_of = |token: &Token| match token {
        Token::Word(word) if !is_keyword(word) => Some(word.clone()),
        Token::Quoted(name) => Some(name.clone()),
        _ => None,
    };
    let (expression, name) = match tokens {
        [] => return None,
        // `expr AS alias`
        [expression @ .., Token::Word(as_word), alias] if as_word == "as" => {
            (expression, name_of(alias)?)
        }
        // `expr alias`, after a call, a column or a CASE
        [.., previous, alias] if may_precede_alias(previous) && name_of(alias).is_some() => {
            (&tokens[..tokens.len() - 1], name_of(alias)?)
        }
        _ => (tokens, bare_column(tokens)?),
    };
    if expression.is_empty() {
        return None;
    }
    Some(SelectItem {
        name,
        expression: render(expression),
    })
}

/// Whether a token may end an expression that an implicit alias follows (`count(*) n`,
/// `CASE ... END ratio`, `x renamed`).
fn may_precede_alias(token: &Token) -> bool {
    match token {
        Token::Punct(')') | Token::Quoted(_) => true,
        Token::Word(word) => word == "end" || !is_keyword(word),
        _ => false,
    }
}

/// The column of a bare column item (`age`, `t.age`, `"Age"`).
fn bare_column(tokens: &[Token]) -> Option<String> {
    let column = match tokens {
        [column] | [.., Token::Punct('.'), column] => column,
        _ => return None,
    };
    let qualified_ok = tokens.len() == 1
        || tokens
            .iter()
            .all(|token| matches!(token, Token::Word(_) | Token::Quoted(_) | Token::Punct('.')));
    match column {
        Token::Word(word) if qualified_ok && !is_keyword(word) => Some(word.clone()),
        Token::Quoted(name) if qualified_ok => Some(name.clone()),
        _ => None,
    }
}

/// Whether a normalized expression computes something: it calls a function, applies an
/// operator or is a `CASE`, rather than copying a column or a literal.
pub(super) fn is_computed(expression: &str) -> bool {
    let mut outside_literal = true;
    for character in expression.chars() {
        if character == '\'' {
            outside_literal = !outside_literal;
        } else if outside_literal && "()+-*/%|<>=!~^&:".contains(character) {
            return true;
        }
    }
    expression
        .split(|character: char| !(character.is_alphanumeric() || character == '_'))
        .any(|word| word == "case")
}

/// A SQL token; words and quoted identifiers lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or an unquoted identifier.
    Word(String),
    /// A `"quoted"` or `` `quoted` `` identifier, without its quotes.
    Quoted(String),
    /// A `'string'` literal, quotes included, as written.
    Str(String),
    /// A number.
    Number(String),
    /// Any other character.
    Punct(char),
}

/// Splits SQL into tokens, dropping whitespace and comments; `None` for an unterminated
/// literal, quoted identifier or comment.
fn tokenize(sql: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut characters = sql.chars().peekable();
    while let Some(character) = characters.next() {
        match character {
            _ if character.is_whitespace() => {}
            '-' if characters.peek() == Some(&'-') => {
                for next in characters.by_ref() {
                    if next == '\n' {
                        break;
                    }
                }
            }
            '/' if characters.peek() == Some(&'*') => {
                characters.next();
                let mut previous = ' ';
                loop {
                    let next = characters.next()?;
                    if previous == '*' && next == '/' {
                        break;
                    }
                    previous = next;
                }
            }
            '\'' => {
                let mut literal = String::from('\'');
                loop {
                    let next = characters.next()?;
                    literal.push(next);
                    if next == '\'' {
                        // `''` is an escaped quote inside the literal.
                        match characters.next_if_eq(&'\'') {
                            Some(quote) => literal.push(quote),
                            None => break,
                        }
                    }
                }
                tokens.push(Token::Str(literal));
            }
            '"' | '`' => {
                let mut name = String::new();
                loop {
                    let next = characters.next()?;
                    if next == character {
                        break;
                    }
                    name.extend(next.to_lowercase());
                }
                tokens.push(Token::Quoted(name));
            }
            _ if character.is_ascii_digit() => {
                let mut number = String::from(character);
                while let Some(next) =
                    characters.next_if(|next| next.is_ascii_alphanumeric() || *next == '.')
                {
                    number.extend(next.to_lowercase());
                }
                tokens.push(Token::Number(number));
            }
            _ if character.is_alphabetic() || character == '_' => {
                let mut word: String = character.to_lowercase().collect();
                while let Some(next) = characters
                    .next_if(|next| next.is_alphanumeric() || *next == '_' || *next == '$')
                {
                    word.extend(next.to_lowercase());
                }
                tokens.push(Token::Word(word));
            }
            _ => tokens.push(Token::Punct(character)),
        }
    }
    Some(tokens)
}

/// Joins tokens back into text: one space between two words, literals or numbers and after
/// a `)` that a word follows, none elsewhere, and qualifiers (`t.`, `schema.t.`) dropped.
fn render(tokens: &[Token]) -> String {
    let mut text = String::new();
    let mut previous_is_word = false;
    let mut index = 0;
    while index < tokens.len() {
        let token = &tokens[index];
        let is_name = matches!(token, Token::Word(_) | Token::Quoted(_));
        let qualifies_next = is_name
            && tokens.get(index + 1) == Some(&Token::Punct('.'))
            && matches!(
                tokens.get(index + 2),
                Some(Token::Word(_) | Token::Quoted(_) | Token::Punct('*'))
            );
        if qualifies_next {
            index += 2;
            continue;
        }
        let (piece, is_word) = match token {
            Token::Word(word) | Token::Quoted(word) => (word.as_str(), true),
            Token::Str(literal) => (literal.as_str(), true),
            Token::Number(number) => (number.as_str(), true),
            Token::Punct(character) => {
                previous_is_word = false;
                text.push(*character);
                index += 1;
                continue;
            }
        };
        if previous_is_word || text.ends_with(')') {
            text.push(' ');
        }
        text.push_str(piece);
        previous_is_word = is_word;
        index += 1;
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A SQL expression normalized the way [`select_items`] normalizes its items; `None`
    /// when it cannot be read.
    fn normalize_expression(sql: &str) -> Option<String> {
        tokenize(sql).map(|tokens| render(&tokens))
    }

    fn item(name: &str, expression: &str) -> SelectItem {
        SelectItem {
            name: name.to_string(),
            expression: expression.to_string(),
        }
    }

    #[test]
    fn levenshtein_counts_single_character_edits() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("größe", "grösse"), 2);
    }

    #[test]
    fn similarity_is_one_minus_the_relative_distance() {
        assert_eq!(similarity("", ""), 1.0);
        assert_eq!(similarity("age", "age"), 1.0);
        assert_eq!(similarity("abc", "xyz"), 0.0);
        assert!((similarity("purchases7d", "purchase7d") - (1.0 - 1.0 / 11.0)).abs() < 1e-9);
        assert_eq!(
            similarity_at_least("purchases7d", "purchase7d", NAME_SIMILARITY_THRESHOLD),
            Some(similarity("purchases7d", "purchase7d"))
        );
        assert_eq!(
            similarity_at_least("age", "agg", NAME_SIMILARITY_THRESHOLD),
            None
        );
        assert_eq!(
            similarity_at_least("a", "abcdefgh", NAME_SIMILARITY_THRESHOLD),
            None
        );
    }

    #[test]
    fn names_are_compared_without_case_and_separators() {
        assert_eq!(normalize_name("Clicks_7d"), "clicks7d");
        assert_eq!(normalize_name("user-age"), "userage");
        assert_eq!(quantities("clicks_7d"), vec!["7d"]);
        assert_eq!(quantities("top3_items_v12"), vec!["3", "12"]);
        assert_eq!(quantities("interval '30 days'"), vec!["30"]);
        assert!(quantities("age").is_empty());
    }

    #[test]
    fn expressions_are_normalized() {
        assert_eq!(
            normalize_expression("SUM( T.Clicks )  /  COUNT(*)").as_deref(),
            Some("sum(clicks)/count(*)")
        );
        assert_eq!(
            normalize_expression("CASE\n  WHEN a.x > 0 -- positive\n THEN 'Yes' ELSE 'no' END")
                .as_deref(),
            Some("case when x>0 then 'Yes' else 'no' end")
        );
        assert_eq!(
            normalize_expression("count(DISTINCT s.t.\"User Id\") /* ids */").as_deref(),
            Some("count(distinct user id)")
        );
        assert_eq!(
            normalize_expression("x + 1.5e3 || 'it''s'").as_deref(),
            Some("x+1.5e3||'it''s'")
        );
        assert_eq!(normalize_expression("'unterminated"), None);
        assert_eq!(normalize_expression("a /* unterminated"), None);
    }

    #[test]
    fn select_items_split_the_top_level_list() {
        let sql = "-- a comment, with a comma\n\
            WITH recent AS (SELECT a, b FROM t WHERE x > 1)\n\
            SELECT DISTINCT user_id, r.ts,\n\
              coalesce(sum(clicks), 0) AS clicks_7d,\n\
              CASE WHEN n > 0 THEN round(x / n, 2) ELSE 0 END ratio,\n\
              CAST(CASE WHEN s > 0 THEN a ELSE b END AS FLOAT) As \"Avg\",\n\
              count(*),\n\
              substring(name FROM 1 FOR 3) AS prefix,\n\
              x IS NULL,\n\
              *\n\
            FROM recent r JOIN other o ON r.a = o.a\n\
            GROUP BY 1, 2";
        assert_eq!(
            select_items(sql),
            vec![
                item("user_id", "user_id"),
                item("ts", "ts"),
                item("clicks_7d", "coalesce(sum(clicks),0)"),
                item("ratio", "case when n>0 then round(x/n,2) else 0 end"),
                item("avg", "cast(case when s>0 then a else b end as float)"),
                item("prefix", "substring(name from 1 for 3)"),
            ]
        );
    }

    #[test]
    fn select_items_of_unreadable_sql_are_none() {
        assert!(select_items("").is_empty());
        assert!(select_items("not sql at all").is_empty());
        assert!(select_items("SELECT 'oops AS x FROM t").is_empty());
        assert_eq!(select_items("select a + b as c"), vec![item("c", "a+b")]);
    }

    #[test]
    fn bare_columns_and_literals_are_not_computed() {
        assert!(!is_computed("age"));
        assert!(!is_computed("1"));
        assert!(!is_computed("'a (b)'"));
        assert!(is_computed("count(*)"));
        assert!(is_computed("a+b"));
        assert!(is_computed("x>0"));
        assert!(is_computed("case when x then 1 else 0 end"));
    }

    fn registry(views: &[(&str, &str, Option<&str>, &[&str])]) -> Registry {
        let mut registry = Registry::default();
        for (name, source, sql, features) in views {
            let view = larder_core::FeatureView {
                name: (*name).to_string(),
                source: (*source).to_string(),
                transformation: sql.map(str::to_string),
                features: features
                    .iter()
                    .map(|feature| larder_core::Feature {
                        name: (*feature).to_string(),
                        dtype: larder_core::ValueType::Int64,
                        description: String::new(),
                        vector_index: None,
                    })
                    .collect(),
                ..Default::default()
            };
            registry.feature_views.insert((*name).to_string(), view);
        }
        registry
    }

    #[test]
    fn only_new_features_are_compared_and_each_pair_once() {
        let recorded = registry(&[("activity", "events", None, &["clicks_7d", "clicks_1d"])]);
        let desired = registry(&[
            (
                "activity",
                "events",
                None,
                &["clicks_7d", "clicks_1d", "clicks_30d"],
            ),
            (
                "stats",
                "events",
                Some(
                    "SELECT user_id, SUM(x) AS total, sum(x) AS sum_x, sum(y) / 2 AS half FROM events",
                ),
                &["clicks-7d", "total", "sum_x", "half"],
            ),
            (
                "other",
                "elsewhere",
                Some("SELECT sum(x) AS total_x FROM elsewhere"),
                &["total_x"],
            ),
        ]);
        assert_eq!(
            similarity_warnings(&recorded, &desired),
            vec![
                "feature stats:clicks-7d looks like activity:clicks_7d (name similarity 1.00); reuse it or rename",
                "feature stats:total computes the same expression as stats:sum_x (sum(x), similarity 1.00); reuse it or rename",
            ]
        );
        assert!(similarity_warnings(&desired, &desired).is_empty());
    }

    #[test]
    fn the_init_demo_warns_about_nothing() {
        // The views of `larder init`: windows of one counter and rates of different counters.
        let sql = "SELECT user_id, event_timestamp, clicks_1d, clicks_7d, clicks_30d,\n\
            CASE WHEN impressions_7d > 0 THEN CAST(clicks_7d AS DOUBLE) / CAST(impressions_7d AS DOUBLE) ELSE 0.0 END AS ctr_7d,\n\
            CAST(CASE WHEN sessions_7d > 0 THEN CAST(session_minutes_7d AS DOUBLE) / CAST(sessions_7d AS DOUBLE) ELSE 0.0 END AS FLOAT) AS avg_session_minutes,\n\
            CASE WHEN clicks_30d > 0 THEN CAST(purchases_30d AS DOUBLE) / CAST(clicks_30d AS DOUBLE) ELSE 0.0 END AS conversion_rate_30d,\n\
            sessions_7d > 0 AS is_active_7d\n\
            FROM activity_events";
        let desired = registry(&[
            (
                "user_profile",
                "user_profiles",
                None,
                &[
                    "age",
                    "country",
                    "account_age_days",
                    "is_premium",
                    "lifetime_value",
                    "avg_order_value",
                    "orders_total",
                    "days_since_last_order",
                    "credit_score",
                    "email_verified",
                    "signup_channel",
                    "loyalty_points",
                    "churn_risk",
                ],
            ),
            (
                "user_activity",
                "activity_events",
                Some(sql),
                &[
                    "clicks_1d",
                    "clicks_7d",
                    "clicks_30d",
                    "impressions_7d",
                    "ctr_7d",
                    "sessions_7d",
                    "avg_session_minutes",
                    "purchases_30d",
                    "conversion_rate_30d",
                    "dwell_seconds_7d",
                    "last_category",
                    "recent_item_ids",
                    "is_active_7d",
                ],
            ),
        ]);
        assert_eq!(
            select_items(sql)
                .iter()
                .filter(|item| is_computed(&item.expression))
                .count(),
            4
        );
        assert!(similarity_warnings(&Registry::default(), &desired).is_empty());
    }

    #[test]
    fn nearly_the_same_expression_is_reported_with_its_similarity() {
        let desired = registry(&[
            (
                "a",
                "events",
                Some("SELECT sum(e.clicks) / count(*) AS click_rate FROM events e"),
                &["click_rate"],
            ),
            (
                "b",
                "events",
                Some("SELECT SUM(click) / COUNT(*) AS rate FROM events"),
                &["rate"],
            ),
        ]);
        let recorded = registry(&[("a", "events", None, &["click_rate"])]);
        assert_eq!(
            similarity_warnings(&recorded, &desired),
            vec![
                "feature b:rate computes nearly the same expression as a:click_rate (sum(click)/count(*), similarity 0.95); reuse it or rename"
            ]
        );
        assert_eq!(two_decimals(0.999), "0.99");
        assert_eq!(shorten(&"x".repeat(41)), format!("{}...", "x".repeat(40)));
    }
}
