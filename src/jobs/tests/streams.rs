//! Streams: replay then live, log watches, waits for results, bounded slots.

use super::*;

#[tokio::test]
async fn a_watch_replays_then_goes_live_with_no_seam() {
    let h = harness();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    let mut stream = h.service.watch_job("j1", 0).await.expect("watch");
    // On this single-threaded runtime the stream has not read yet: this event
    // lands between its subscription and its first read, the seam.
    h.smile.answer_status(Ok(StatusReport {
        result: Some(result("0822", false)),
        ..StatusReport::default()
    }));
    h.service
        .refresh("j1", StatusExtras::default())
        .await
        .expect("provisional");
    assert_eq!(
        next_kinds(&mut stream, 3).await,
        [
            (1, EventKind::Created),
            (2, EventKind::Submitted),
            (3, EventKind::ProvisionalResult)
        ]
    );
    h.smile.answer_status(final_status("1220"));
    h.service.refresh("j1", StatusExtras::default()).await.expect("final");
    assert_eq!(next_kinds(&mut stream, 1).await, [(4, EventKind::FinalResult)]);
    assert!(stream.recv().await.is_none(), "the stream ends after the final event");

    let mut resumed = h.service.watch_job("j1", 3).await.expect("resume");
    assert_eq!(next_kinds(&mut resumed, 1).await, [(4, EventKind::FinalResult)]);
    assert!(resumed.recv().await.is_none());
}

#[tokio::test]
async fn a_log_watch_filters_by_user_and_rides_out_failed_reads() {
    let h = harness();
    h.service
        .submit(submission("alice", "a1", 1), soon())
        .await
        .expect("submit");
    let mut alice = h
        .service
        .watch_log(
            LogFilter {
                user_id: Some("alice".into()),
                owner: None,
            },
            LogStart::Beginning,
        )
        .await
        .expect("watch");
    h.store.fail_reads(3);
    h.service
        .submit(submission("bob", "b1", 2), soon())
        .await
        .expect("submit");
    h.service
        .submit(submission("alice", "a2", 3), soon())
        .await
        .expect("submit");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), alice.recv()).await {
            Ok(Some(Ok(WatchItem::Event(event)))) => seen.push((event.job.job_id.clone(), event.kind)),
            Ok(Some(Ok(WatchItem::Heartbeat { .. }))) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("a1".to_owned(), EventKind::Created),
            ("a1".to_owned(), EventKind::Submitted),
            ("a2".to_owned(), EventKind::Created),
            ("a2".to_owned(), EventKind::Submitted)
        ]
    );
}

#[tokio::test]
async fn a_submit_may_wait_for_the_final_result() {
    let h = harness();
    let service = h.service.clone();
    let waiting = crate::task::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let output = service.submit(submission("u", "j1", 1), deadline).await?;
        let job = service.wait_for_final(&output.job.job_id, deadline).await?;
        Ok::<_, JobError>(job)
    });
    // Let the submission be accepted (its images are checked on the image-check lane) and start waiting.
    for _ in 0..1000 {
        if h.store.kinds("j1").last() == Some(&EventKind::Submitted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.smile.answer_status(final_status("1220"));
    h.service.refresh("j1", StatusExtras::default()).await.expect("final");
    let job = waiting.await.expect("joined").expect("submit");
    assert_eq!(job.state, JobState::Completed);
}

#[tokio::test]
async fn log_watchers_at_the_same_place_share_their_reads() {
    let h = harness();
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(
            h.service
                .watch_log(LogFilter::default(), LogStart::Now)
                .await
                .expect("watch"),
        );
    }
    let before = h.store.log_reads();
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    for stream in &mut streams {
        assert_eq!(
            next_kinds(stream, 2).await,
            [(1, EventKind::Created), (2, EventKind::Submitted)]
        );
    }
    let reads = h.store.log_reads() - before;
    assert!(reads <= 8, "{reads} log reads for 20 streams and 2 events");
}

#[tokio::test]
async fn open_streams_are_bounded_and_a_closed_one_frees_its_slot() {
    let h = Harness::new(ServiceConfig {
        max_open_streams: 2,
        ..ServiceConfig::default()
    });
    h.service
        .submit(submission("u", "j1", 1), soon())
        .await
        .expect("submit");
    let first = h.service.watch_job("j1", 0).await.expect("first");
    let _second = h
        .service
        .watch_log(LogFilter::default(), LogStart::Now)
        .await
        .expect("second");
    let refused = h.service.watch_job("j1", 0).await.expect_err("over the bound");
    assert!(
        matches!(
            refused,
            JobError::Overloaded {
                limit: Limit::OpenStreams,
                ..
            }
        ),
        "{refused:?}"
    );
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(stream) = h.service.watch_job("j1", 0).await {
            reopened = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reopened.is_some(), "the slot of a closed stream is free again");
}
