//! S3 notifications as they reach the function: directly (an S3 event), or wrapped in the messages
//! of an SQS batch (optionally inside an SNS envelope). Everything becomes a list of [`Notice`]s,
//! each remembering the SQS message it came from.

use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use lookalike::index::sequencer;
use serde::Deserialize;
use serde_json::Value;

/// What happened to an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created { size: u64, etag: String },
    Removed,
}

/// One object notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The SQS message it came in (`None` for a direct S3 event).
    pub message_id: Option<String>,
    pub bucket: String,
    /// The object key, URL-decoded.
    pub key: String,
    pub change: Change,
    /// The record's `sequencer`, normalised; `None` when missing or malformed (a hand-made
    /// event), which orders the change by commit instead.
    pub sequencer: Option<String>,
}

/// How the event reached the function; decides the shape of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// An S3 event invoking the function directly (asynchronous invocation).
    Direct,
    /// An SQS batch: the response lists the messages to retry.
    Sqs,
}

/// A parsed invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub delivery: Delivery,
    pub notices: Vec<Notice>,
    /// SQS messages that could not be understood (returned as failures, so that they end in the
    /// dead-letter queue instead of vanishing).
    pub unreadable: Vec<(String, String)>,
    /// Messages (or the direct event) that carried nothing to do: `s3:TestEvent`, other event
    /// types.
    pub ignored: usize,
}

/// A payload that is not an S3 or SQS event this function handles.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("not an S3 or SQS event: {0}")]
    Unrecognised(String),
    #[error("malformed S3 event: {0}")]
    MalformedS3(String),
    #[error("malformed SQS event: {0}")]
    MalformedSqs(String),
}

/// Decode an S3 key from a notification: `+` is a space, then percent-decoding.
pub fn decode_key(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parse an invocation's payload.
pub fn parse(event: &Value) -> Result<Batch, EventError> {
    let records = event.get("Records").and_then(Value::as_array);
    let source = records
        .and_then(|r| r.first())
        .and_then(|r| r.get("eventSource").or_else(|| r.get("EventSource")))
        .and_then(Value::as_str);
    match (records, source) {
        (Some(_), Some("aws:sqs")) => parse_sqs(event),
        (Some(_), Some("aws:s3")) => {
            let notices = parse_s3(event, None)?;
            Ok(Batch {
                delivery: Delivery::Direct,
                notices,
                unreadable: Vec::new(),
                ignored: 0,
            })
        }
        // An empty batch, or the message S3 sends when a notification is configured.
        (Some(r), _) if r.is_empty() => Ok(Batch::empty(Delivery::Direct)),
        _ if is_test_event(event) => Ok(Batch {
            ignored: 1,
            ..Batch::empty(Delivery::Direct)
        }),
        _ => Err(EventError::Unrecognised(shorten(&event.to_string()))),
    }
}

impl Batch {
    fn empty(delivery: Delivery) -> Self {
        Batch {
            delivery,
            notices: Vec::new(),
            unreadable: Vec::new(),
            ignored: 0,
        }
    }
}

fn is_test_event(v: &Value) -> bool {
    v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent")
}

fn shorten(s: &str) -> String {
    if s.len() <= 200 {
        s.to_string()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

fn parse_s3(event: &Value, message_id: Option<&str>) -> Result<Vec<Notice>, EventError> {
    let parsed = S3Event::deserialize(event).map_err(|e| EventError::MalformedS3(e.to_string()))?;
    let mut notices = Vec::with_capacity(parsed.records.len());
    for record in parsed.records {
        let name = record.event_name.as_deref().unwrap_or("");
        let change = if name.starts_with("ObjectCreated:") {
            Change::Created {
                size: record.s3.object.size.unwrap_or(0).max(0) as u64,
                etag: record
                    .s3
                    .object
                    .e_tag
                    .clone()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string(),
            }
        } else if name.starts_with("ObjectRemoved:") || name.starts_with("LifecycleExpiration:") {
            Change::Removed
        } else {
            tracing::info!(
                event = name,
                "ignoring an S3 event that neither creates nor removes"
            );
            continue;
        };
        let (Some(bucket), Some(key)) = (record.s3.bucket.name, record.s3.object.key) else {
            return Err(EventError::MalformedS3(
                "a record without bucket name or object key".into(),
            ));
        };
        notices.push(Notice {
            message_id: message_id.map(str::to_string),
            bucket,
            key: decode_key(&key),
            change,
            sequencer: sequencer::parse(record.s3.object.sequencer.as_deref()),
        });
    }
    Ok(notices)
}

fn parse_sqs(event: &Value) -> Result<Batch, EventError> {
    let parsed =
        SqsEvent::deserialize(event).map_err(|e| EventError::MalformedSqs(e.to_string()))?;
    let mut batch = Batch::empty(Delivery::Sqs);
    for message in parsed.records {
        let Some(id) = message.message_id else {
            return Err(EventError::MalformedSqs(
                "a message without messageId".into(),
            ));
        };
        let body = message.body.unwrap_or_default();
        match parse_message_body(&body, &id) {
            Ok(Some(notices)) => batch.notices.extend(notices),
            Ok(None) => batch.ignored += 1,
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, body = %shorten(&body), "unreadable SQS message");
                batch.unreadable.push((id, e.to_string()));
            }
        }
    }
    Ok(batch)
}

/// The notices in one SQS message body; `None` for a message with nothing to do.
fn parse_message_body(body: &str, id: &str) -> Result<Option<Vec<Notice>>, EventError> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| EventError::MalformedS3(format!("the body is not JSON: {e}")))?;
    if is_test_event(&value) {
        return Ok(None);
    }
    // S3 -> SNS -> SQS: the S3 event is a string inside the SNS envelope.
    if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        if let Some(inner) = value.get("Message").and_then(Value::as_str) {
            return parse_message_body(inner, id);
        }
    }
    if value.get("Records").is_some() {
        return parse_s3(&value, Some(id)).map(Some);
    }
    Err(EventError::Unrecognised(shorten(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(name: &str, key: &str) -> Value {
        json!({"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
               "eventTime": "2026-11-28T12:00:00.000Z", "eventName": name,
               "userIdentity": {"principalId": "x"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
               "responseElements": {}, "s3": {"s3SchemaVersion": "1.0", "configurationId": "c",
               "bucket": {"name": "b", "arn": "arn:aws:s3:::b"},
               "object": {"key": key, "size": 12, "eTag": "\"abc\"", "sequencer": "01"}}})
    }

    #[test]
    fn a_backfill_message_reads_as_the_notification_of_a_put() {
        let objects = [lookalike::store::ObjectMeta {
            key: "photos/a cat+1 ü.jpg".into(),
            size: 1234,
            etag: "abc".into(),
            metadata: Default::default(),
        }];
        let body = lookalike::backfill::notification("b", &objects);
        let ev = json!({"Records": [{"messageId": "m1", "receiptHandle": "r", "body": body,
            "attributes": {}, "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:1:q", "awsRegion": "us-east-1"}]});
        let batch = parse(&ev).unwrap();
        assert!(batch.unreadable.is_empty(), "{:?}", batch.unreadable);
        assert_eq!(batch.notices.len(), 1);
        let n = &batch.notices[0];
        assert_eq!(
            (n.bucket.as_str(), n.key.as_str()),
            ("b", "photos/a cat+1 ü.jpg")
        );
        assert_eq!(
            n.change,
            Change::Created {
                size: 1234,
                etag: "abc".into()
            }
        );
        assert_eq!(n.sequencer, None);
        assert_eq!(n.message_id.as_deref(), Some("m1"));
    }

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(decode_key("a+b%21/c%2Bd.jpg"), "a b!/c+d.jpg");
        assert_eq!(decode_key("caf%C3%A9.jpg"), "café.jpg");
        assert_eq!(decode_key("plain/key.jpg"), "plain/key.jpg");
    }

    #[test]
    fn direct_events_become_notices() {
        let ev = json!({"Records": [record("ObjectCreated:Put", "x/my+cat.jpg"),
                                    record("ObjectRemoved:Delete", "x/old.jpg"),
                                    record("ObjectRestore:Completed", "x/cold.jpg")]});
        let batch = parse(&ev).unwrap();
        assert_eq!(batch.delivery, Delivery::Direct);
        assert_eq!(batch.notices.len(), 2);
        assert_eq!(batch.notices[0].key, "x/my cat.jpg");
        assert_eq!(
            batch.notices[0].change,
            Change::Created {
                size: 12,
                etag: "abc".into()
            }
        );
        assert_eq!(batch.notices[1].change, Change::Removed);
        assert_eq!(batch.notices[0].sequencer.as_deref(), Some("01"));
    }

    #[test]
    fn a_missing_or_malformed_sequencer_is_none_not_an_error() {
        let mut bad = record("ObjectCreated:Put", "a.jpg");
        bad["s3"]["object"]["sequencer"] = json!("not hex!");
        let mut missing = record("ObjectCreated:Put", "b.jpg");
        missing["s3"]["object"]
            .as_object_mut()
            .unwrap()
            .remove("sequencer");
        let batch = parse(&json!({"Records": [bad, missing]})).unwrap();
        assert_eq!(batch.notices.len(), 2);
        assert!(batch.notices.iter().all(|n| n.sequencer.is_none()));
    }

    #[test]
    fn sqs_bodies_sns_envelopes_test_events_and_garbage() {
        let s3 = json!({"Records": [record("ObjectCreated:Copy", "k.jpg")]});
        let sns = json!({"Type": "Notification", "Message": s3.to_string()});
        let test = json!({"Service": "Amazon S3", "Event": "s3:TestEvent"});
        let msg = |id: &str, body: String| json!({"messageId": id, "body": body, "eventSource": "aws:sqs"});
        let ev = json!({"Records": [msg("1", s3.to_string()), msg("2", sns.to_string()),
                                    msg("3", test.to_string()), msg("4", "not json".into())]});
        let batch = parse(&ev).unwrap();
        assert_eq!(batch.delivery, Delivery::Sqs);
        let ids: Vec<_> = batch
            .notices
            .iter()
            .map(|n| n.message_id.clone().unwrap())
            .collect();
        assert_eq!(ids, vec!["1", "2"]);
        assert_eq!(batch.ignored, 1);
        assert_eq!(batch.unreadable.len(), 1);
        assert_eq!(batch.unreadable[0].0, "4");
    }

    #[test]
    fn other_payloads_are_errors_and_test_events_are_ignored() {
        assert!(parse(&json!({"foo": 1})).is_err());
        assert!(parse(&json!("text")).is_err());
        let direct_test = json!({"Service": "Amazon S3", "Event": "s3:TestEvent"});
        assert_eq!(parse(&direct_test).unwrap().ignored, 1);
        assert!(parse(&json!({"Records": []})).unwrap().notices.is_empty());
    }
}
