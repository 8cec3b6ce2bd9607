use super::*;

fn answer(payload: &str, status: Option<async_nats::StatusCode>) -> async_nats::Message {
    async_nats::Message {
        subject: "_INBOX.x.1.0".into(),
        reply: None,
        payload: bytes::Bytes::from(payload.to_string()),
        headers: None,
        status,
        description: None,
        length: payload.len(),
    }
}

#[test]
fn acknowledgements_are_read_for_what_they_say() {
    assert_eq!(
        ack_result(&answer(r#"{"stream":"S","seq":7}"#, None)),
        Ok(())
    );
    let dup = r#"{"stream":"S","seq":7,"duplicate":true}"#;
    assert_eq!(ack_result(&answer(dup, None)), Ok(()));
    let refused =
        r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
    let e = ack_result(&answer(refused, None)).unwrap_err();
    assert!(
        e.contains("503") && e.contains("maximum messages exceeded"),
        "{e}"
    );
    let e = ack_result(&answer("", Some(async_nats::StatusCode::NO_RESPONDERS))).unwrap_err();
    assert!(e.contains("no stream"), "{e}");
    assert!(ack_result(&answer("hello", None)).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_call_ends_once_every_message_is_answered_once() {
    let call = Call::new(3);
    call.answer(0, Ok(()));
    call.answer(0, Ok(()));
    call.answer(7, Ok(()));
    assert_eq!(call.state.lock().unwrap().left, 2);
    call.answer(2, Err("refused".into()));
    call.answer(1, Ok(()));
    // Every message answered: the wait ends at once.
    tokio::time::timeout(Duration::from_millis(1), call.done.notified())
        .await
        .expect("done");
    assert_eq!(call.state.lock().unwrap().failed, ["refused"]);
}
