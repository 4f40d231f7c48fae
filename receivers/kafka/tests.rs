//! Kafka receiver tests: config checks; the offset tracker (commit only what is done, in order);
//! and the task against librdkafka's mock cluster: records in, malformed ones skipped and
//! counted, offsets committed only after the batch's finalizer fired.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, TracesData};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;
use tracepipe_config::{ComponentKind, Duration as CfgDuration};
use tracepipe_pipeline::telemetry::Health;
use tracepipe_pipeline::topology::{ComponentContext, Input, Output};
use tracepipe_pipeline::BatchStatus;

use super::{InitialOffset, KafkaReceiverConfig, OffsetTracker};

fn parse(body: &str) -> Result<KafkaReceiverConfig, Vec<tracepipe_config::ConfigError>> {
    let text = format!("receivers:\n  k:\n    type: kafka\n{body}sinks:\n  d: {{type: debug, inputs: [k]}}\n");
    let (cfg, errs) = tracepipe_config::load("t.yaml", &text, &|_| None);
    assert!(errs.is_empty(), "{errs}");
    KafkaReceiverConfig::from_node(&cfg.receivers[0].body, "t.yaml")
}

#[test]
fn config_defaults_and_errors() {
    let c = parse("").unwrap();
    assert_eq!((c.topic.as_str(), c.group_id.as_str(), c.initial_offset), ("otlp_spans", "tracepipe", InitialOffset::Latest));
    let props = c.rdkafka_properties();
    assert!(props.contains(&("enable.auto.offset.store".into(), "false".into())), "{props:?}");
    assert!(props.contains(&("auto.commit.interval.ms".into(), "1000".into())), "{props:?}");
    let c = parse("    commit_interval: 250ms\n    brokers: [\"a:9092,b:9093\"]\n").unwrap();
    assert!(c.rdkafka_properties().contains(&("auto.commit.interval.ms".into(), "250".into())));
    assert!(c.rdkafka_properties().contains(&("bootstrap.servers".into(), "a:9092,b:9093".into())));
    let e = parse("    commit_interval: 0s\n    brokers: [\"a:9092,b\"]\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[0].contains("invalid broker \"b\""), "{all:?}");
    assert!(all[1].contains("commit_interval must be above 0"), "{all:?}");
    let e = parse("    brokers: [\"host\"]\n    topic: \"a/b\"\n    heartbeat_interval: 20s\n    librdkafka_options: { group.id: x }\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all[0].starts_with("t.yaml:4:14: invalid broker \"host\""), "{all:?}");
    assert!(all[1].starts_with("t.yaml:5:12: invalid topic \"a/b\""), "{all:?}");
    assert!(all[2].contains("`group.id` is set by the receiver's own settings"), "{all:?}");
    assert!(all[3].contains("heartbeat_interval must be above 0 and below session_timeout"), "{all:?}");
    let e = parse("    group_id: \"\"\n    max_record_bytes: 0\n    initial_offset: newest\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:6:21:"), "{}", e[0]);
    let e = parse("    group_id: \"\"\n    max_record_bytes: 0\n").unwrap_err();
    let all: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert!(all.iter().any(|m| m.starts_with("t.yaml:4:15: group_id must not be empty")), "{all:?}");
    assert!(all.iter().any(|m| m.starts_with("t.yaml:5:23: max_record_bytes must be above 0")), "{all:?}");
}

/// `progress_topic` is checked like a topic name at its key, and may not be the topic read.
#[test]
fn progress_topic_is_checked_at_its_key() {
    assert_eq!(parse("    progress_topic: spans-progress\n").unwrap().progress_topic.as_deref(), Some("spans-progress"));
    let e = parse("    progress_topic: \"a/b\"\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:4:21: invalid topic \"a/b\""), "{e:?}");
    let e = parse(&format!("    progress_topic: {}\n", "x".repeat(250))).unwrap_err();
    assert!(e[0].to_string().contains("invalid topic"), "{e:?}");
    let e = parse("    topic: spans\n    progress_topic: spans\n").unwrap_err();
    assert!(e[0].to_string().contains("progress_topic must not be the topic read"), "{e:?}");
}

/// `outage_grace`: none by default (waits resume with the first record after an outage), at most 5m.
#[test]
fn outage_grace_defaults_to_none_and_is_bounded() {
    assert!(parse("").unwrap().outage_grace.get().is_zero());
    assert_eq!(parse("    outage_grace: 10s\n").unwrap().outage_grace.get(), std::time::Duration::from_secs(10));
    let e = parse("    outage_grace: 6m\n").unwrap_err();
    assert!(e[0].to_string().starts_with("t.yaml:4:19: outage_grace must be at most 5m"), "{e:?}");
}

#[test]
fn offsets_commit_only_a_done_prefix() {
    let mut t = OffsetTracker::default();
    for o in 10..15 {
        t.begin(0, o, 1);
    }
    t.begin(1, 7, 1);
    // 12 and 11 finish first: nothing before them is done, so nothing may be committed.
    assert_eq!(t.done(0, 12, 1), None);
    assert_eq!(t.done(0, 11, 1), None);
    assert_eq!(t.done(0, 10, 1), Some(12));
    assert_eq!(t.done(0, 14, 1), None, "13 is still pending");
    assert_eq!(t.done(1, 7, 1), Some(7), "partitions are independent");
    assert_eq!(t.done(0, 13, 1), Some(14));
    assert_eq!(t.done(0, 13, 1), None, "a second report changes nothing");
    assert_eq!(t.done(5, 1, 1), None, "unknown partition");
    assert_eq!(t.pending(), 0);
}

/// A record handed back undelivered (its partition revoked while a processor held it) bars
/// commits at and after it; a new assignment of the partition starts afresh; records already
/// taken in this assignment are recognised when read again.
#[test]
fn handed_back_records_bar_the_commit_and_a_new_assignment_starts_afresh() {
    let mut t = OffsetTracker::default();
    for o in 10..14 {
        t.begin(0, o, 1);
    }
    assert!(t.taken(0, 12, 1) && !t.taken(0, 14, 1) && !t.taken(0, 12, 2));
    assert_eq!(t.done(0, 10, 1), Some(10));
    t.handed_back(0, 11, 1);
    assert_eq!(t.pending(), 2, "no longer pending");
    assert_eq!(t.done(0, 12, 1), None, "11 is read again by the next owner: nothing after it commits");
    assert_eq!(t.done(0, 13, 1), None);
    // The partition comes back: a new generation, from the last commit.
    t.begin(0, 11, 2);
    assert_eq!(t.done(0, 13, 1), None, "a report from the old generation changes nothing");
    assert_eq!(t.done(0, 11, 2), Some(11));
}

/// Offsets finished past the committable prefix are reported as ranges; a new owner resumed from
/// them skips exactly those, and reports them in its own progress until its commit passes them.
#[test]
fn progress_past_the_commit_is_reported_and_resumed() {
    use super::Progress;
    let mut t = OffsetTracker::default();
    assert_eq!(t.progress(0, 1), None, "nothing read yet");
    for o in 10..20 {
        t.begin(0, o, 1);
    }
    for o in [12, 13, 14, 16, 19] {
        assert_eq!(t.done(0, o, 1), None);
    }
    assert_eq!(t.progress(0, 1), Some(Progress { next: 10, done: vec![(12, 14), (16, 16), (19, 19)], ..Progress::default() }));
    assert_eq!(t.done(0, 10, 1), Some(10));
    assert_eq!(t.done(0, 11, 1), Some(14), "the prefix swallows the range after it");
    assert_eq!(t.progress(0, 1), Some(Progress { next: 15, done: vec![(16, 16), (19, 19)], ..Progress::default() }));
    t.handed_back(0, 15, 1);
    assert_eq!(t.done(0, 17, 1), None);
    assert_eq!(t.progress(0, 1), Some(Progress { next: 15, done: vec![(16, 17), (19, 19)], ..Progress::default() }), "a handed-back record is not done");
    assert_eq!(t.progress(0, 2), None, "another generation");

    // The next owner (another process) resumes from it; its commit starts where the group's is,
    // which may be behind the progress's `next` (auto-commit had not caught up).
    let last = t.progress(0, 1).unwrap();
    let mut n = OffsetTracker::default();
    n.resume(0, last);
    let skipped: Vec<i64> = (13..21).filter(|&o| n.already_done(0, o, 7)).collect();
    assert_eq!(skipped, vec![13, 14, 16, 17, 19], "below `next` and in the ranges");
    assert!(!n.already_done(0, 13, 8), "another generation (the partition came back) starts without it");
    let mut n = OffsetTracker::default();
    n.resume(0, Progress { next: 15, done: vec![(16, 17), (19, 19)], ..Progress::default() });
    assert!(n.already_done(0, 13, 7));
    n.begin(0, 13, 7);
    assert_eq!(n.done(0, 13, 7), Some(13));
    assert_eq!(n.progress(0, 7), Some(Progress { next: 14, done: vec![(14, 14), (16, 17), (19, 19)], ..Progress::default() }), "what the previous owner did stays reported");
    n.begin(0, 14, 7);
    n.done(0, 14, 7);
    n.begin(0, 15, 7);
    assert!(!n.already_done(0, 15, 7));
    for o in [16, 17] {
        n.begin(0, o, 7);
        n.done(0, o, 7);
    }
    assert_eq!(n.progress(0, 7), Some(Progress { next: 15, done: vec![(16, 17), (19, 19)], ..Progress::default() }));
    assert_eq!(n.done(0, 15, 7), Some(17));
    assert_eq!(n.progress(0, 7), Some(Progress { next: 18, done: vec![(19, 19)], ..Progress::default() }));
}

/// What became of each finished record (kept: its spans reached a sink; dropped by a sampling
/// decision; unknown: mixed or not told) is reported with the progress, resumed by the next
/// owner, reported on by it until committed, and written as JSON only when known (a record
/// from an older version, without it, reads as all unknown).
#[test]
fn progress_carries_what_became_of_each_finished_record() {
    use super::Progress;
    let mut t = OffsetTracker::default();
    for o in 10..20 {
        t.begin(0, o, 1);
    }
    for (o, kept) in [(12, Some(true)), (13, Some(true)), (14, Some(false)), (16, None), (17, Some(false))] {
        t.done_with(0, o, 1, kept);
    }
    let p = t.progress(0, 1).unwrap();
    assert_eq!(p, Progress { next: 10, done: vec![(12, 14), (16, 17)], kept: vec![(12, 13)], dropped: vec![(14, 14), (17, 17)] });
    assert_eq!(p.check(20), Ok(()));
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(json, r#"{"next":10,"done":[[12,14],[16,17]],"kept":[[12,13]],"dropped":[[14,14],[17,17]]}"#);
    let old: Progress = serde_json::from_str(r#"{"next":10,"done":[[12,14]]}"#).unwrap();
    assert_eq!(old.outcome(12), None, "an older record: not known");
    assert!(!serde_json::to_string(&old).unwrap().contains("kept"));
    // The commit passes some: they leave every list.
    t.done_with(0, 10, 1, Some(true));
    t.done_with(0, 11, 1, Some(true));
    assert_eq!(t.progress(0, 1).unwrap(), Progress { next: 15, done: vec![(16, 17)], kept: vec![], dropped: vec![(17, 17)] });
    // The next owner knows each one's fate, and reports it on.
    let mut n = OffsetTracker::default();
    n.resume(0, p);
    assert_eq!([12, 14, 16, 15].map(|o| n.prior_outcome(0, o, 3)), [Some(true), Some(false), None, None]);
    n.begin(0, 12, 3);
    n.done_with(0, 12, 3, Some(true));
    let again = n.progress(0, 3).unwrap();
    assert_eq!((again.kept.clone(), again.dropped.clone()), (vec![(13, 13)], vec![(14, 14), (17, 17)]));
    // A record whose outcome contradicts itself or names what is not done is not used.
    for bad in [
        Progress { next: 10, done: vec![(12, 14)], kept: vec![(12, 13)], dropped: vec![(13, 14)] },
        Progress { next: 10, done: vec![(12, 14)], kept: vec![(15, 15)], dropped: vec![] },
        Progress { next: 10, done: vec![(12, 14), (16, 16)], kept: vec![(13, 16)], dropped: vec![] },
    ] {
        assert!(bad.check(20).is_err(), "{bad:?}");
    }
}

/// A progress record read back is used only when it fits its partition as it is now: a wrong
/// one would skip records nobody delivered.
#[test]
fn a_progress_record_is_checked_against_its_partition() {
    use super::Progress;
    let p = |next: i64, done: &[(i64, i64)]| Progress { next, done: done.to_vec(), ..Progress::default() };
    assert_eq!(p(10, &[(12, 14), (16, 16)]).check(20), Ok(()));
    assert_eq!(p(10, &[(10, 10), (11, 14)]).check(20), Ok(()), "adjacent ranges are still disjoint");
    assert_eq!(p(20, &[]).check(20), Ok(()), "everything written is done");
    for (bad, why) in [
        (p(1000, &[]), "outside"),
        (p(-1, &[]), "outside"),
        (p(10, &[(16, 16), (12, 14)]), "out of order"),
        (p(10, &[(12, 14), (14, 15)]), "overlapping"),
        (p(10, &[(8, 9)]), "below next"),
        (p(10, &[(14, 12)]), "out of order"),
        (p(10, &[(12, 20)]), "past the partition's end"),
        (p(0, &(0..5000).map(|i| (2 * i, 2 * i)).collect::<Vec<_>>()), "more than"),
    ] {
        let e = bad.check(20).expect_err(&format!("{bad:?}"));
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

/// A progress record carries at most MAX_PROGRESS_RANGES ranges, the lowest: the rest are read
/// again by a new owner (duplicates, never a loss), and the record stays far below Kafka's 1 MB.
#[test]
fn progress_reports_at_most_the_lowest_ranges() {
    use super::offsets::MAX_PROGRESS_RANGES;
    let mut t = OffsetTracker::default();
    let n = 3 * MAX_PROGRESS_RANGES as i64;
    for o in 0..2 * n {
        t.begin(0, o, 1);
    }
    for o in (1..2 * n).step_by(2) {
        t.done(0, o, 1);
    }
    let pr = t.progress(0, 1).expect("read");
    assert_eq!(pr.next, 0);
    assert_eq!(pr.done.len(), MAX_PROGRESS_RANGES);
    assert_eq!(pr.done.first(), Some(&(1, 1)));
    assert_eq!(pr.done.last(), Some(&(2 * MAX_PROGRESS_RANGES as i64 - 1, 2 * MAX_PROGRESS_RANGES as i64 - 1)));
    assert_eq!(pr.check(2 * n), Ok(()));
    let bytes = serde_json::to_vec(&pr).unwrap().len();
    assert!(bytes < 1 << 20, "{bytes} bytes");
}

fn request(spans: usize, tag: u8) -> Vec<u8> {
    let spans = (0..spans)
        .map(|i| Span { trace_id: vec![tag; 16], span_id: vec![tag, i as u8 + 1, 0, 0, 0, 0, 0, 1], name: format!("op{i}"), ..Default::default() })
        .collect();
    TracesData { resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }] }.encode_to_vec()
}

#[test]
fn records_are_validated_like_otlp_requests() {
    use super::receiver::{decode, Decoded};
    use super::Encoding;
    let td = TracesData::decode(&request(3, 1)[..]).unwrap();
    // OTLP/JSON records.
    let json = tracepipe_pipeline::otlp_json::encode_request(&td.resource_spans);
    assert!(matches!(decode(&json, Encoding::OtlpJson, 1 << 20), Decoded::Spans(b, 0) if b.span_count() == 3));
    assert!(matches!(decode(b"{\"resourceSpans\": 5}", Encoding::OtlpJson, 1 << 20), Decoded::Malformed("json", _)));
    // A span with a 3-byte trace id is dropped and counted; the others go on.
    let mut bad = td.clone();
    bad.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![1, 2, 3];
    match decode(&bad.encode_to_vec(), Encoding::OtlpProto, 1 << 20) {
        Decoded::Spans(b, rejected) => assert_eq!((b.span_count(), rejected), (2, 1)),
        _ => panic!("expected spans"),
    }
    assert!(matches!(decode(&[], Encoding::OtlpProto, 1 << 20), Decoded::Empty));
    assert!(matches!(decode(&request(3, 1), Encoding::OtlpProto, 10), Decoded::Malformed("body_too_large", _)));
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    match got.elements()[0].offset() {
        rdkafka::Offset::Offset(o) => o,
        _ => -1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_skips_malformed_and_commits_only_after_delivery() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("spans", 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let values = [request(3, 1), b"\xff\xffnot protobuf".to_vec(), request(40, 3), request(2, 2)];
    for v in &values {
        producer.send(BaseRecord::<(), [u8]>::to("spans").payload(v)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let (tx, mut input) = Input::channel(8);
    let shutdown = CancellationToken::new();
    let ctx = ComponentContext {
        name: "k".into(),
        kind: ComponentKind::Receiver,
        input: None,
        output: Some(Output::new(vec![tx])),
        shutdown: shutdown.clone(),
        health: Health::default(),
    };
    let cfg = KafkaReceiverConfig {
        brokers: vec![bootstrap.clone()],
        topic: "spans".into(),
        group_id: "g".into(),
        initial_offset: InitialOffset::Earliest,
        session_timeout: CfgDuration::from_secs(6),
        heartbeat_interval: CfgDuration::from_secs(1),
        librdkafka_options: [("auto.commit.interval.ms".to_owned(), "100".to_owned())].into(),
        // The 40-span record is over the limit.
        max_record_bytes: tracepipe_config::ByteSize(request(3, 1).len() as u64 * 4),
        ..Default::default()
    };
    let h = tokio::spawn(super::build(cfg, ctx).await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(30), input.recv()).await.expect("a batch").unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), input.recv()).await.expect("a batch").unwrap();
    assert_eq!((first.span_count(), second.span_count()), (3, 2), "the malformed and the oversized records are skipped");
    // Nothing delivered yet: nothing committed, however long auto-commit runs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let bs = bootstrap.clone();
    assert_eq!(tokio::task::spawn_blocking(move || committed(&bs, "g", "spans")).await.unwrap(), -1);
    // The last batch finishes first: still nothing may be committed (offset 0 is pending).
    second.set_status(BatchStatus::Delivered);
    drop(second);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let bs = bootstrap.clone();
    assert_eq!(tokio::task::spawn_blocking(move || committed(&bs, "g", "spans")).await.unwrap(), -1);
    first.set_status(BatchStatus::Delivered);
    drop(first);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), h).await.expect("stops").unwrap().unwrap();
    let bs = bootstrap.clone();
    assert_eq!(tokio::task::spawn_blocking(move || committed(&bs, "g", "spans")).await.unwrap(), 4, "all four records, the skipped ones included");
}

/// Starts the receiver on `topic` of `bootstrap` from the earliest offset.
async fn receiver(bootstrap: &str, marking: super::MessageMarking) -> (Input, CancellationToken, tokio::task::JoinHandle<Result<(), tracepipe_pipeline::ComponentError>>) {
    receiver_with(bootstrap, marking, None).await
}

/// [`receiver`], with a `progress_topic`.
async fn receiver_with(bootstrap: &str, marking: super::MessageMarking, progress_topic: Option<&str>) -> (Input, CancellationToken, tokio::task::JoinHandle<Result<(), tracepipe_pipeline::ComponentError>>) {
    let (tx, input) = Input::channel(8);
    let shutdown = CancellationToken::new();
    let ctx = ComponentContext { name: "k".into(), kind: ComponentKind::Receiver, input: None, output: Some(Output::new(vec![tx])), shutdown: shutdown.clone(), health: Health::default() };
    let cfg = KafkaReceiverConfig {
        progress_topic: progress_topic.map(str::to_owned),
        brokers: vec![bootstrap.to_owned()],
        topic: "spans".into(),
        group_id: "g".into(),
        initial_offset: InitialOffset::Earliest,
        session_timeout: CfgDuration::from_secs(6),
        heartbeat_interval: CfgDuration::from_secs(1),
        librdkafka_options: [("auto.commit.interval.ms".to_owned(), "100".to_owned())].into(),
        message_marking: marking,
        ..Default::default()
    };
    let h = tokio::spawn(super::build(cfg, ctx).await.unwrap());
    (input, shutdown, h)
}

fn produce(bootstrap: &str, values: &[Vec<u8>]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    for v in values {
        producer.send(BaseRecord::<(), [u8]>::to("spans").payload(v)).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

async fn recv(input: &mut Input) -> tracepipe_pipeline::Batch {
    tokio::time::timeout(Duration::from_secs(30), input.recv()).await.expect("a batch").unwrap()
}

async fn committed_now(bootstrap: &str) -> i64 {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let bs = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || committed(&bs, "g", "spans")).await.unwrap()
}

/// A record whose delivery failed with a retryable error (a sink gave up) is not committed: it
/// is delivered again, and nothing after it is committed until it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_failed_is_delivered_again_not_committed() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("spans", 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    produce(&bootstrap, &[request(3, 1), request(2, 2)]);
    let (mut input, shutdown, h) = receiver(&bootstrap, Default::default()).await;
    let first = recv(&mut input).await;
    let second = recv(&mut input).await;
    assert_eq!((first.span_count(), second.span_count()), (3, 2));
    second.set_status(BatchStatus::Delivered);
    drop(second);
    first.set_status(BatchStatus::Errored);
    drop(first);
    // The failed record comes back (after its backoff) with the same spans.
    let again = recv(&mut input).await;
    assert_eq!(again.span_count(), 3);
    assert_eq!(committed_now(&bootstrap).await, -1, "committed past a record that was not delivered");
    again.set_status(BatchStatus::Delivered);
    drop(again);
    assert_eq!(committed_now(&bootstrap).await, 2);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), h).await.expect("stops").unwrap().unwrap();
}

/// A permanent failure is committed past (counted, logged); with `on_error: true` so is a
/// retryable one; `after: false` commits as soon as a record is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_on_error_commit_past() {
    use super::MessageMarking;
    for (marking, status) in [
        (MessageMarking::default(), BatchStatus::Rejected),
        (MessageMarking { after: true, on_error: true }, BatchStatus::Errored),
        (MessageMarking { after: false, on_error: false }, BatchStatus::Errored),
    ] {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("spans", 1, 1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        produce(&bootstrap, &[request(3, 1)]);
        let (mut input, shutdown, h) = receiver(&bootstrap, marking).await;
        let b = tokio::time::timeout(Duration::from_secs(30), input.recv()).await.expect("a batch").unwrap();
        if !marking.after {
            assert_eq!(committed_now(&bootstrap).await, 1, "after: false commits on read");
        }
        b.set_status(status);
        drop(b);
        assert_eq!(committed_now(&bootstrap).await, 1, "{marking:?} {status:?}");
        assert!(tokio::time::timeout(Duration::from_millis(1500), input.recv()).await.is_err(), "{marking:?} {status:?}: delivered again");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), h).await.expect("stops").unwrap().unwrap();
    }
}

/// With `progress_topic`, what one consumer finished past its commit is skipped by the next:
/// records 1 and 3 of 0..4 are delivered, 0 and 2 are still held when it stops (handed back,
/// uncommitted); the next consumer of the group gets 0 and 2, skips 3, and sends 1 again just
/// before 2 because they share a key. Without it, the next consumer gets all four (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_skips_what_the_last_finished_past_its_commit() {
    for with_progress in [true, false] {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("spans", 1, 1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        // Keys as a request id: records 1 and 2 belong to one request, whose record 1 is finished
        // and record 2 is not.
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        for (v, k) in [(request(1, 1), "a"), (request(2, 2), "x"), (request(3, 3), "x"), (request(4, 4), "y")] {
            producer.send(BaseRecord::to("spans").key(k).payload(&v)).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let start = |bootstrap: String| async move {
            let (tx, input) = Input::channel(8);
            let shutdown = CancellationToken::new();
            let ctx = ComponentContext { name: "k".into(), kind: ComponentKind::Receiver, input: None, output: Some(Output::new(vec![tx])), shutdown: shutdown.clone(), health: Health::default() };
            let cfg = KafkaReceiverConfig {
                brokers: vec![bootstrap],
                topic: "spans".into(),
                group_id: "g".into(),
                initial_offset: InitialOffset::Earliest,
                session_timeout: CfgDuration::from_secs(6),
                heartbeat_interval: CfgDuration::from_secs(1),
                shutdown_timeout: CfgDuration::from_millis(300),
                progress_topic: with_progress.then(|| "spans-progress".to_owned()),
                ..Default::default()
            };
            (input, shutdown, tokio::spawn(super::build(cfg, ctx).await.unwrap()))
        };
        let (mut input, shutdown, h) = start(bootstrap.clone()).await;
        let mut held = Vec::new();
        for i in 0..4 {
            let b = recv(&mut input).await;
            assert_eq!(b.span_count(), i + 1);
            if i % 2 == 1 {
                b.set_status(BatchStatus::Delivered);
            } else {
                held.push(b);
            }
        }
        shutdown.cancel();
        // A processor lets what it holds go when the partitions are revoked at shutdown.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for b in held {
            b.set_status(BatchStatus::Errored);
        }
        tokio::time::timeout(Duration::from_secs(30), h).await.expect("stops").unwrap().unwrap();
        assert_eq!(committed_now(&bootstrap).await, -1, "offset 0 was never delivered");

        let (mut input, shutdown, h) = start(bootstrap.clone()).await;
        let mut got = Vec::new();
        while let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(if got.is_empty() { 30 } else { 3 }), input.recv()).await {
            got.push(b.span_count());
            b.set_status(BatchStatus::Delivered);
        }
        // Record 3 (key y) is skipped; record 1 (key x) is skipped, then sent again ahead of
        // record 2, the unfinished record of its key, so the two are decided together.
        assert_eq!(got, if with_progress { vec![1, 2, 3] } else { vec![1, 2, 3, 4] }, "progress_topic: {with_progress}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), h).await.expect("stops").unwrap().unwrap();
        assert_eq!(committed_now(&bootstrap).await, 4, "the skipped records are committed past too");
    }
}

/// Records of a partition are taken only while it is assigned: one fetched before its partition
/// was revoked gets no generation (the new owner reads it), and a partition assigned again gets a
/// new generation whose flag is not the revoked one.
#[test]
fn records_of_a_revoked_partition_are_not_taken() {
    use std::sync::atomic::Ordering;
    let ctx = super::lag::LagContext::new("k", "t", Default::default(), Duration::from_secs(1), None);
    assert!(ctx.generation(3).is_none(), "never assigned");
    ctx.assign(&[3, 4]);
    let (g1, flag1) = ctx.generation(3).expect("assigned");
    assert_eq!(ctx.generation(3).unwrap().0, g1, "one generation per assignment");
    ctx.revoke(&[3]);
    assert!(flag1.load(Ordering::Acquire), "what was read of it is flagged");
    assert!(ctx.generation(3).is_none(), "a record still arriving after the revocation is not taken");
    assert!(ctx.generation(4).is_some(), "other partitions stay");
    ctx.assign(&[3]);
    let (g2, flag2) = ctx.generation(3).expect("assigned again");
    assert!(g2 > g1 && !flag2.load(Ordering::Acquire));
}

/// The receiver takes the same `tls` and `auth.sasl` settings as the sink (config/kafka.rs):
/// they reach its consumer properties, and `librdkafka_options` may not override them.
#[test]
fn tls_and_sasl_reach_the_consumer_properties() {
    let c = parse("    tls: { ca_file: /ca.pem }\n    auth: { sasl: { mechanism: SCRAM-SHA-256, username: u, password: p } }\n").unwrap();
    let props = c.rdkafka_properties();
    for want in [("security.protocol", "sasl_ssl"), ("ssl.ca.location", "/ca.pem"), ("sasl.mechanism", "SCRAM-SHA-256"), ("sasl.username", "u")] {
        assert!(props.contains(&(want.0.into(), want.1.into())), "{want:?} missing");
    }
    let e = parse("    librdkafka_options: { ssl.ca.location: /x }\n").unwrap_err();
    assert!(e[0].to_string().contains("is set by the receiver's `tls` and `auth` settings"), "{e:?}");
}

/// Skipped records wait by (partition, key) for a later record of their key, within the window
/// and the byte bound, oldest dropped first; taking them empties the key.
#[test]
fn the_stash_keeps_skipped_records_by_key_within_its_window_and_bound() {
    use super::stash::{Stash, STASH_WINDOW};
    use std::time::Instant;
    let t0 = Instant::now();
    let mut s = Stash::new(10);
    s.keep(0, Some(b"r1"), b"aaa", Some(true), t0);
    s.keep(0, Some(b"r1"), b"bb", None, t0);
    s.keep(1, Some(b"r1"), b"c", None, t0);
    s.keep(0, None, b"dddd", None, t0);
    assert_eq!(s.bytes(), 6, "a record without a key cannot be matched: not kept");
    assert!(s.take(0, Some(b"r2")).is_empty());
    assert_eq!(s.take(0, Some(b"r1")), vec![(bytes::Bytes::from_static(b"aaa"), Some(true)), (bytes::Bytes::from_static(b"bb"), None)], "oldest first, with what became of them");
    assert!(s.take(0, Some(b"r1")).is_empty(), "taken once");
    assert_eq!(s.bytes(), 1);
    // Over the bound: the oldest go first (the partition-1 record), the newest stays.
    s.keep(0, Some(b"r3"), b"eeeeee", None, t0);
    s.keep(0, Some(b"r1"), b"ffff", None, t0);
    assert_eq!(s.bytes(), 10);
    s.keep(0, Some(b"r4"), b"g", None, t0);
    assert!(s.bytes() <= 10);
    assert!(s.take(1, Some(b"r1")).is_empty() && s.take(0, Some(b"r3")).is_empty(), "the oldest were dropped");
    assert_eq!(s.take(0, Some(b"r1")), vec![(bytes::Bytes::from_static(b"ffff"), None)], "a value kept after an earlier take of its key is not lost to the old entries");
    // Past the window.
    s.expire(t0 + STASH_WINDOW);
    assert_eq!(s.bytes(), 0);
    assert!(s.take(0, Some(b"r4")).is_empty());
}

/// A progress record that does not fit its partition is not used, whatever it says: one from an
/// earlier topic of the same name (`next` past the partition's end), ranges out of order, or no
/// JSON at all; every record is delivered. A record that fits is used (the control: record 1
/// skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_record_that_does_not_fit_is_not_used() {
    for (record, skipped) in [
        (&br#"{"next":1000,"done":[]}"#[..], false),
        (&br#"{"next":0,"done":[[3,3],[1,1]]}"#[..], false),
        (&b"not json"[..], false),
        (&br#"{"next":0,"done":[[1,1]]}"#[..], true),
    ] {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("spans", 1, 1).unwrap();
        mock.create_topic("spans-progress", 1, 1).unwrap();
        let bootstrap = mock.bootstrap_servers();
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        for (i, v) in (1..=4).map(|i| request(i, i as u8)).enumerate() {
            producer.send(BaseRecord::to("spans").key(&format!("k{i}")).payload(&v)).map_err(|(e, _)| e).unwrap();
        }
        producer.send(BaseRecord::to("spans-progress").key("g/spans/0").payload(record)).map_err(|(e, _)| e).unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
        let (mut input, shutdown, h) = receiver_with(&bootstrap, super::MessageMarking::default(), Some("spans-progress")).await;
        let mut got = Vec::new();
        while let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(if got.is_empty() { 30 } else { 3 }), input.recv()).await {
            got.push(b.span_count());
            b.set_status(BatchStatus::Delivered);
        }
        let record = String::from_utf8_lossy(record);
        assert_eq!(got, if skipped { vec![1, 3, 4] } else { vec![1, 2, 3, 4] }, "progress record {record}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), h).await.expect("stops").unwrap().unwrap();
        assert_eq!(committed_now(&bootstrap).await, 4, "{record}");
    }
}
