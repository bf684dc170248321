//! The dead queue stays bounded by a RabbitMQ policy (max-length with drop-head, message-ttl),
//! which an operator sets and changes with `rabbitmqctl set_policy` without re-declaring the
//! queue (docs/OPERATIONS.md, "Dead letters"). The test needs `rabbitmqctl` on the machine of
//! the broker the tests use; where it is not (a testcontainers broker, no RabbitMQ tools), it
//! says so and passes without checking.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::TestEnv;
use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// `rabbitmqctl args…`: its output, or None when it cannot run or fails.
fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = Command::new("rabbitmqctl").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the test's policy however the test ends.
struct Policy(String);

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["clear_policy", &self.0]);
    }
}

/// The policy applied to `queue`, as `rabbitmqctl list_queues` reports it.
fn policy_of(queue: &str) -> Option<String> {
    rabbitmqctl(&["-q", "list_queues", "name", "policy"])?
        .lines()
        .find_map(|l| {
            let mut cols = l.split('\t');
            (cols.next()? == queue).then(|| cols.next().unwrap_or("").trim().to_owned())
        })
}

async fn depth(ch: &lapin::Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_bounds_the_dead_queue_by_length_and_age() {
    let env = TestEnv::new().await;
    let topology = env.topology();
    let conn = env.amqp().await;
    bgagent_shared::queue::rabbit::declare(&conn, &topology)
        .await
        .unwrap();
    let dead = topology.dead_queue();
    // rabbitmqctl must talk to the broker this test uses: it lists the queue just declared.
    if policy_of(&dead).is_none() {
        eprintln!(
            "skipped: rabbitmqctl is not available for the test broker, so no policy can be set"
        );
        return;
    }
    let name = format!("{}-dead-letters", env.prefix);
    let pattern = format!("^{}$", dead.replace('.', "\\."));
    let set = |definition: &str| {
        rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "10",
            &name,
            &pattern,
            definition,
        ])
        .expect("rabbitmqctl set_policy")
    };
    set(r#"{"max-length":5,"overflow":"drop-head"}"#);
    let _policy = Policy(name.clone());
    let deadline = Instant::now() + WAIT;
    while policy_of(&dead).as_deref() != Some(name.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the policy is not applied to {dead}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Twenty copies arrive; the queue keeps the five newest.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let publish = |i: usize| {
        let ch = ch.clone();
        let exchange = topology.dead_letter_exchange();
        async move {
            ch.basic_publish(
                exchange.as_str().into(),
                "dead".into(),
                BasicPublishOptions::default(),
                format!("copy {i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    for i in 0..20 {
        publish(i).await;
    }
    assert_eq!(depth(&ch, &dead).await, 5);
    let mut kept = Vec::new();
    while let Some(m) = ch
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        kept.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    let newest: Vec<String> = (15..20).map(|i| format!("copy {i}")).collect();
    assert_eq!(kept, newest, "drop-head keeps the newest copies");

    // The operator changes the bound in place: copies now expire after half a second.
    set(r#"{"max-length":5,"overflow":"drop-head","message-ttl":500}"#);
    for i in 20..23 {
        publish(i).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let left = depth(&ch, &dead).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} copies outlived their TTL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    conn.close(0, "done".into()).await.ok();
}
