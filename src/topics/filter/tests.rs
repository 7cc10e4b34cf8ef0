//! The filter language, table-driven: what each form selects, and where a malformed one fails.

use serde_json::json;

use super::*;

fn event() -> (String, String, String, JsonObject) {
    let data = json!({
        "amount": 120,
        "ratio": 0.5,
        "region": "eu",
        "vip": true,
        "note": null,
        "tags": ["new", "big"],
        "customer": {"tier": "gold", "since": 2019},
        "odd key": 1,
    });
    let Json::Object(data) = data else {
        unreachable!()
    };
    ("Order 7".into(), "alice".into(), "orders.eu".into(), data)
}

fn accepts(filter: &str) -> bool {
    let (title, user_id, topic, data) = event();
    let subject = Subject {
        title: &title,
        user_id: &user_id,
        topic: &topic,
        data: Some(&data),
    };
    Filter::parse(filter)
        .unwrap_or_else(|e| panic!("{filter:?}: {e}"))
        .accepts(&subject)
}

#[test]
fn filters_select_exactly_what_they_say() {
    let cases = [
        (r#"title == "Order 7""#, true),
        (r#"title != "Order 7""#, false),
        (r#"userId == "alice""#, true),
        (r#"userId in ["bob", "alice"]"#, true),
        (r#"userId in ["bob"]"#, false),
        (r#"topic == "orders.eu""#, true),
        (r#"topic >= "orders.a" and topic < "orders.f""#, true),
        ("data.amount > 100", true),
        ("data.amount >= 120", true),
        ("data.amount < 120", false),
        ("data.amount == 120.0", true),
        ("data.ratio <= 0.5", true),
        ("data.amount in [1, 2, 120]", true),
        (r#"data.region == "eu""#, true),
        (r#"data.region > "aa""#, true),
        ("data.vip == true", true),
        ("data.vip == 1", false),
        ("data.note == null", true),
        ("exists data.note", true),
        ("exists data.missing", false),
        ("exists data", true),
        ("data.missing == 1", false),
        ("data.missing != 1", true),
        ("data.missing < 1", false),
        (r#"data.amount > "1""#, false),
        (r#"data.customer.tier == "gold""#, true),
        ("data.customer.since < 2020", true),
        (r#"data.tags.0 == "new""#, true),
        (r#"data.tags.5 == "new""#, false),
        (r#"data."odd key" == 1"#, true),
        (r#"data.amount > 100 and data.region == "us""#, false),
        (r#"data.amount > 100 or data.region == "us""#, true),
        ("not data.vip == true", false),
        ("not not data.vip == true", true),
        (r#"not (data.amount > 500 or userId == "bob")"#, true),
        (
            r#"(title == "x" or title == "Order 7") and not exists data.gone"#,
            true,
        ),
        // `and` binds tighter than `or`.
        (
            r#"userId == "bob" and data.vip == true or data.amount == 120"#,
            true,
        ),
        (
            r#"userId == "bob" and (data.vip == true or data.amount == 120)"#,
            false,
        ),
        ("data.amount>100", true),
        ("  data.amount   >   100  ", true),
    ];
    for (filter, expected) in cases {
        assert_eq!(accepts(filter), expected, "{filter}");
    }
}

#[test]
fn an_event_without_data_has_no_data_fields() {
    let subject = Subject {
        title: "t",
        user_id: "",
        topic: "x",
        data: None,
    };
    for (filter, expected) in [
        ("exists data", false),
        ("exists data.a", false),
        ("data.a == 1", false),
        ("data.a != 1", true),
        (r#"userId == """#, true),
    ] {
        assert_eq!(
            Filter::parse(filter).unwrap().accepts(&subject),
            expected,
            "{filter}"
        );
    }
}

#[test]
fn a_malformed_filter_names_what_was_expected_and_where() {
    let cases = [
        ("", 0, "expected title, userId, topic or data"),
        ("size > 1", 0, "expected title, userId, topic or data"),
        ("title", 5, "expected a comparison"),
        ("title ==", 8, "expected a value"),
        ("title == 'x'", 9, "expected a value"),
        (
            r#"title == "x" and"#,
            16,
            "expected title, userId, topic or data",
        ),
        (
            r#"title == "x" xor 1"#,
            13,
            "expected `and`, `or` or the end",
        ),
        ("(data.a == 1", 12, "expected `)`"),
        ("data.a == 1)", 11, "expected `and`, `or` or the end"),
        ("title.x == 1", 5, "only data has fields"),
        ("data. == 1", 5, "expected a name after `.`"),
        ("data.a in 1", 10, "expected `[`"),
        ("data.a in [1 2]", 13, "expected `,` or `]`"),
        ("data.a == tru", 10, "expected a value"),
        (r#"data.a == "open"#, 10, "expected a JSON string or number"),
        ("data.a == 1e999", 10, "expected a JSON string or number"),
        ("data.a == -", 10, "expected a JSON string or number"),
        ("exists", 6, "expected title, userId, topic or data"),
    ];
    for (filter, position, message) in cases {
        let err = Filter::parse(filter).expect_err(filter);
        assert_eq!(err.position, position, "{filter}: {err}");
        assert!(err.message.starts_with(message), "{filter}: {err}");
        assert!(
            err.to_string()
                .ends_with(&format!("at position {position}")),
            "{err}"
        );
    }
}

#[test]
fn length_depth_lists_and_paths_are_bounded() {
    let long = format!("title == \"{}\"", "x".repeat(MAX_FILTER_BYTES));
    assert!(
        Filter::parse(&long)
            .unwrap_err()
            .message
            .contains("longer than")
    );

    let nested = |n: usize| format!("{}title == \"x\"{}", "(".repeat(n), ")".repeat(n));
    assert!(Filter::parse(&nested(MAX_DEPTH - 1)).is_ok());
    let err = Filter::parse(&nested(MAX_DEPTH)).unwrap_err();
    assert!(err.message.contains("nested deeper"), "{err}");
    let nots = format!("{}title == \"x\"", "not ".repeat(MAX_DEPTH));
    assert!(
        Filter::parse(&nots)
            .unwrap_err()
            .message
            .contains("nested deeper")
    );

    let list = |n: usize| {
        let values: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("data.a in [{}]", values.join(","))
    };
    assert!(Filter::parse(&list(MAX_IN)).is_ok());
    assert!(
        Filter::parse(&list(MAX_IN + 1))
            .unwrap_err()
            .message
            .contains("more than")
    );

    let path = |n: usize| format!("exists data{}", ".a".repeat(n));
    assert!(Filter::parse(&path(MAX_PATH)).is_ok());
    assert!(
        Filter::parse(&path(MAX_PATH + 1))
            .unwrap_err()
            .message
            .contains("more than")
    );
}

#[test]
fn the_canonical_spelling_parses_back_to_the_same_filter() {
    for text in [
        r#"data.amount > 100 and (userId in ["a", "b"] or not exists data."odd key")"#,
        r#"title=="x"  or  topic!="y" or data.a.0<=-1.5e3"#,
    ] {
        let filter = Filter::parse(text).unwrap();
        let again = Filter::parse(&filter.to_string()).unwrap();
        assert_eq!(filter, again, "{filter}");
        assert_eq!(filter.to_string(), again.to_string());
    }
    assert_eq!(
        Filter::parse("data.a>1 and data.b==\"x\"")
            .unwrap()
            .to_string(),
        Filter::parse("(data.a > 1) and data.b == \"x\"")
            .unwrap()
            .to_string()
    );
}
