//! The runner lists the queue once and then works from its due index: new mail is delivered
//! without listing the queue again, however many deferred messages wait in it; an admin
//! change (here: `retry_now`, what `relayward queue retry` does) asks for one rescan.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relayward_queue::{
    BoxFuture, Changes, MessageId, NewMessage, Queue, QueueError, QueuedMessage, RecipientStatus,
    RecipientUpdate,
};
use support::*;
use tokio::sync::oneshot;

/// A queue that counts how often it is listed whole, and how often each message is read.
struct Counting {
    inner: Arc<dyn Queue>,
    lists: AtomicUsize,
    gets: Mutex<HashMap<MessageId, usize>>,
}

impl Counting {
    fn new(inner: Arc<dyn Queue>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            lists: AtomicUsize::new(0),
            gets: Mutex::new(HashMap::new()),
        })
    }

    fn gets_of(&self, id: &MessageId) -> usize {
        self.gets
            .lock()
            .expect("gets")
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

impl Queue for Counting {
    fn enqueue(&self, message: NewMessage) -> BoxFuture<'_, Result<MessageId, QueueError>> {
        self.inner.enqueue(message)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<QueuedMessage>, QueueError>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list()
    }
    fn get<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<QueuedMessage, QueueError>> {
        *self
            .gets
            .lock()
            .expect("gets")
            .entry(id.clone())
            .or_insert(0) += 1;
        self.inner.get(id)
    }
    fn content<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<Vec<u8>, QueueError>> {
        self.inner.content(id)
    }
    fn update<'a>(
        &'a self,
        id: &'a MessageId,
        updates: Vec<RecipientUpdate>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.update(id, updates)
    }
    fn set_held<'a>(
        &'a self,
        id: &'a MessageId,
        held: bool,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.set_held(id, held)
    }
    fn retry_now<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.retry_now(id)
    }
    fn delete<'a>(&'a self, id: &'a MessageId) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.delete(id)
    }
    fn quarantine<'a>(
        &'a self,
        id: &'a MessageId,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.inner.quarantine(id, reason)
    }
    fn changes(&self) -> BoxFuture<'_, Changes> {
        self.inner.changes()
    }
}

async fn status(relay: &Relay, id: &MessageId) -> Option<RecipientStatus> {
    match relay.queue.get(id).await {
        Ok(m) => m.recipients.first().map(|r| r.status),
        Err(_) => None,
    }
}

#[tokio::test]
async fn new_mail_is_delivered_from_the_index_without_listing_the_queue() {
    let good = ip(127, 31, 0, 2);
    let srv = start_smtp(sock(good, 0), Script::default()).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", good)
        .mx("slow.test", 10, "mx.slow.test")
        .a("mx.slow.test", ip(127, 31, 0, 3));
    let dns = DnsServer::start_on(ip(127, 31, 0, 1), zone).addr;
    let relay = Relay::new();
    // Deferred mail: slow.test's MX refuses connections, and the retry is a minute away.
    let mut deferred = Vec::new();
    for n in 0..20 {
        let id = relay
            .enqueue("alice@local.test", &[&format!("w{n}@slow.test")], "waits")
            .await;
        deferred.push(id);
    }
    let mut config = relay.config(Some(dns), srv.addr.port());
    config.retry = relayward_delivery::RetrySchedule::new(vec![Duration::from_secs(60)], 0.0);
    let counting = Counting::new(relay.dyn_queue());
    let context =
        relayward_delivery::DeliveryContext::new(config, relay.router()).expect("context");
    let runner = relayward_delivery::Runner::with_context(counting.clone(), context);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    // All twenty tried once and deferred.
    let mut tried = false;
    for _ in 0..200 {
        let mut attempts = 0;
        for id in &deferred {
            if let Ok(m) = relay.queue.get(id).await {
                attempts += m.recipients[0].attempts;
            }
        }
        if attempts >= 20 {
            tried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tried, "the deferred messages were not all tried");
    assert_eq!(
        counting.lists.load(Ordering::SeqCst),
        1,
        "listed once, at start"
    );

    // New mail goes out from the index: the queue is not listed again.
    let mut fresh = Vec::new();
    for n in 0..5 {
        let id = counting
            .enqueue(relayward_queue::NewMessage {
                recipients: vec![relayward_queue::NewRecipient {
                    address: format!("n{n}@far.test"),
                    route: relay
                        .router()
                        .route_address(&format!("n{n}@far.test"))
                        .expect("address")
                        .expect("route")
                        .route,
                }],
                sender: "alice@local.test".into(),
                content: b"Subject: new\r\n\r\nnew\r\n".to_vec(),
                client_ip: "127.0.0.1".into(),
                auth_login: None,
                origin: relayward_queue::Origin::Trusted,
                esmtp: Default::default(),
            })
            .await
            .expect("enqueue");
        fresh.push(id);
    }
    let delivered = eventually_async(Duration::from_secs(10), || srv.messages().len() >= 5).await;
    assert!(
        delivered,
        "new mail not delivered: {}",
        srv.messages().len()
    );
    assert_eq!(
        counting.lists.load(Ordering::SeqCst),
        1,
        "no listing for new mail"
    );
    for id in &deferred {
        assert_eq!(status(&relay, id).await, Some(RecipientStatus::Pending));
    }

    // An admin retry asks for one rescan, and the message is tried again at once.
    let before = relay
        .queue
        .get(&deferred[0])
        .await
        .expect("queued")
        .recipients[0]
        .attempts;
    counting.retry_now(&deferred[0]).await.expect("retry");
    let mut retried = false;
    for _ in 0..200 {
        let now = relay
            .queue
            .get(&deferred[0])
            .await
            .expect("queued")
            .recipients[0]
            .attempts;
        if now > before {
            retried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retried, "retry_now did not lead to an attempt");
    assert_eq!(
        counting.lists.load(Ordering::SeqCst),
        2,
        "one rescan for the admin change"
    );
    let _ = stop.send(());
    let _ = task.await;
}

/// A delivery that leaves nothing pending does not read the message back afterwards (every
/// recipient final: the queue removed it); one that leaves a recipient pending does, to put
/// it back in the index at its next attempt. The queue here is the file spool, whose claim
/// is one read of the message: the delivered message is read once, the deferred one twice.
#[tokio::test]
async fn a_finished_delivery_does_not_read_the_message_back() {
    let good = ip(127, 32, 0, 2);
    let srv = start_smtp(sock(good, 0), Script::default()).await;
    let zone = Zone::default()
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", good)
        .mx("slow.test", 10, "mx.slow.test")
        .a("mx.slow.test", ip(127, 32, 0, 3));
    let dns = DnsServer::start_on(ip(127, 32, 0, 1), zone).addr;
    let relay = Relay::new();
    let delivered = relay
        .enqueue("alice@local.test", &["d@far.test"], "goes")
        .await;
    let deferred = relay
        .enqueue("alice@local.test", &["w@slow.test"], "waits")
        .await;
    let mut config = relay.config(Some(dns), srv.addr.port());
    config.retry = relayward_delivery::RetrySchedule::new(vec![Duration::from_secs(60)], 0.0);
    let counting = Counting::new(relay.dyn_queue());
    let context =
        relayward_delivery::DeliveryContext::new(config, relay.router()).expect("context");
    let runner = relayward_delivery::Runner::with_context(counting.clone(), context);
    runner.run_once().await;

    assert_eq!(srv.messages().len(), 1, "the far.test message went out");
    assert_eq!(status(&relay, &delivered).await, None, "delivered: removed");
    assert_eq!(
        status(&relay, &deferred).await,
        Some(RecipientStatus::Pending)
    );
    assert_eq!(
        counting.gets_of(&delivered),
        1,
        "the claim read the delivered message; nothing read it after its delivery"
    );
    assert_eq!(
        counting.gets_of(&deferred),
        2,
        "the claim, and the look at when the deferred one is due again"
    );
    assert_eq!(
        runner.due_entries(),
        1,
        "only the deferred message is back in the index"
    );
}
