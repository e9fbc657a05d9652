//! The ingest queue (SQS): messages sent in batches with retries, received and deleted in
//! batches, and counted. `lookalike backfill` sends through it, `lookalike redrive` moves
//! messages from the dead-letter queue back, `lookalike status` counts them.

use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry,
};

/// SQS takes at most 10 entries per batch call.
pub const MAX_BATCH: usize = 10;

/// Attempts per message before it is reported as failed.
pub const SEND_ATTEMPTS: usize = 6;

/// Why a queue operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("SQS {op} on {url}: {message}")]
pub struct QueueError {
    /// The operation (`SendMessageBatch`, ...).
    pub op: &'static str,
    /// The queue.
    pub url: String,
    /// What SQS (or the connection) said.
    pub message: String,
}

/// The approximate message counts of a queue, as SQS reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Messages waiting to be received.
    pub visible: u64,
    /// Received and not yet deleted (being processed, or waiting out their visibility timeout).
    pub in_flight: u64,
    /// Sent with a delay that has not passed yet.
    pub delayed: u64,
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its message id.
    pub id: String,
    /// Its body.
    pub body: String,
    /// What deletes it.
    pub receipt: String,
}

/// An SQS client from the standard AWS configuration (environment, profile, role;
/// `AWS_ENDPOINT_URL` for a local server): one for all the queues a command uses.
pub async fn client_from_env() -> aws_sdk_sqs::Client {
    let config = crate::sdk::load().await;
    aws_sdk_sqs::Client::new(&config)
}

/// One SQS queue.
#[derive(Debug, Clone)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl Queue {
    /// The queue at `url`, with a client from the standard AWS configuration (environment,
    /// profile, role; `AWS_ENDPOINT_URL` for a local server).
    pub async fn from_env(url: &str) -> Queue {
        Queue::new(client_from_env().await, url)
    }

    /// The queue at `url`, through `client`.
    pub fn new(client: aws_sdk_sqs::Client, url: &str) -> Queue {
        Queue {
            client,
            url: url.to_string(),
        }
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, op: &'static str, e: impl std::error::Error) -> QueueError {
        QueueError {
            op,
            url: self.url.clone(),
            message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
        }
    }

    /// Send `bodies` (at most [`MAX_BATCH`]) in one `SendMessageBatch`, retrying the entries
    /// that fail (and the whole call) with back-off, [`SEND_ATTEMPTS`] times in all; entries
    /// that SQS refuses as the sender's fault (a body it will never take) are not retried.
    /// Returns the entries that failed: (index into `bodies`, why).
    pub async fn send_batch(&self, bodies: &[String]) -> Vec<(usize, String)> {
        let mut pending: Vec<usize> = (0..bodies.len().min(MAX_BATCH)).collect();
        let mut why = vec![String::new(); bodies.len()];
        let mut refused = Vec::new();
        for attempt in 0..SEND_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            let mut entries = Vec::with_capacity(pending.len());
            for &i in &pending {
                match SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&bodies[i])
                    .build()
                {
                    Ok(entry) => entries.push(entry),
                    Err(e) => {
                        why[i] = e.to_string();
                        refused.push(i);
                    }
                }
            }
            pending.retain(|i| !refused.contains(i));
            if entries.is_empty() {
                break;
            }
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let mut again = Vec::new();
                    for f in out.failed() {
                        let Some(i) = f.id().parse::<usize>().ok().filter(|&i| i < bodies.len())
                        else {
                            continue;
                        };
                        let reason = format!("{}: {}", f.code(), f.message().unwrap_or(""));
                        if f.sender_fault() {
                            why[i] = format!("refused by SQS: {reason}");
                            refused.push(i);
                        } else {
                            why[i] = reason;
                            again.push(i);
                        }
                    }
                    pending = again;
                }
                Err(e) => {
                    let message = self.error("SendMessageBatch", e).message;
                    for &i in &pending {
                        why[i] = message.clone();
                    }
                }
            }
        }
        refused
            .into_iter()
            .chain(pending)
            .map(|i| (i, why[i].clone()))
            .collect()
    }

    /// Receive up to `max` (≤ 10) messages, waiting up to `wait` for the first, hiding them for
    /// `visibility`.
    pub async fn receive(
        &self,
        max: i32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH as i32))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(visibility.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(|e| self.error("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Received {
                    id: m.message_id()?.to_string(),
                    body: m.body()?.to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                })
            })
            .collect())
    }

    /// Delete received messages (at most [`MAX_BATCH`]); returns how many were deleted.
    pub async fn delete(&self, receipts: &[String]) -> Result<usize, QueueError> {
        if receipts.is_empty() {
            return Ok(0);
        }
        let mut request = self.client.delete_message_batch().queue_url(&self.url);
        for (i, r) in receipts.iter().take(MAX_BATCH).enumerate() {
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r)
                .build()
                .map_err(|e| self.error("DeleteMessageBatch", e))?;
            request = request.entries(entry);
        }
        let out = request
            .send()
            .await
            .map_err(|e| self.error("DeleteMessageBatch", e))?;
        Ok(out.successful().len())
    }

    /// The queue's approximate counts.
    pub async fn counts(&self) -> Result<QueueCounts, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| self.error("GetQueueAttributes", e))?;
        let get = |name: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueCounts {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }
}

/// What [`redrive`] moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Redriven {
    /// Messages moved (sent to the target, then deleted from the source).
    pub moved: u64,
    /// Why messages could not be sent (they stay in the source queue and show again after
    /// their visibility timeout).
    pub not_sent: Vec<String>,
}

/// Move up to `max` messages from `from` (a dead-letter queue) to `to`: each is received
/// (hidden for two minutes), sent to `to`, and only then deleted from `from`, so none is lost.
/// Stops when `from` looks empty twice in a row, or at the first message that cannot be sent.
pub async fn redrive(from: &Queue, to: &Queue, max: u64) -> Result<Redriven, QueueError> {
    let mut out = Redriven::default();
    let mut empty_polls = 0;
    while out.moved < max && empty_polls < 2 {
        let want = (max - out.moved).min(MAX_BATCH as u64) as i32;
        let got = from
            .receive(want, Duration::from_secs(1), Duration::from_secs(120))
            .await?;
        if got.is_empty() {
            empty_polls += 1;
            continue;
        }
        empty_polls = 0;
        let bodies: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
        let not_sent = to.send_batch(&bodies).await;
        let sent: Vec<String> = got
            .iter()
            .enumerate()
            .filter(|(i, _)| !not_sent.iter().any(|(j, _)| j == i))
            .map(|(_, m)| m.receipt.clone())
            .collect();
        from.delete(&sent).await?;
        out.moved += sent.len() as u64;
        out.not_sent
            .extend(not_sent.into_iter().map(|(_, why)| why));
        if !out.not_sent.is_empty() {
            break;
        }
    }
    Ok(out)
}
