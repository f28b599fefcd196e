//! The tester's relay-trick battery against the policy, in-process, from an untrusted and
//! unauthenticated client: nothing may be accepted for delivery anywhere but a local mailbox.
//! (`relayward check-config` runs the same check on the admin's configuration.)

use relayward_protocol::battery::{TrickContext, battery, render};
use relayward_protocol::command::{Command, parse_command};
use relayward_protocol::resolve::resolve;
use relayward_protocol::route::RouteClass;
use relayward_server::config::Config;
use relayward_server::policy::{ClientIdentity, Policy};

const CONFIG: &str = r#"
hostname = "mx.example.test"
data_dir = "/var/lib/relayward"
[[listen]]
address = "0.0.0.0:25"
kind = "mx"
[relay]
local_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]
mailboxes = ["relaytest@example.test"]
"#;

#[test]
fn no_trick_relays_for_an_untrusted_client() {
    let config = Config::from_toml_str(CONFIG, "battery").expect("parses");
    let policy = Policy::from_config(&config).expect("valid");
    let client = ClientIdentity::anonymous("203.0.113.77".parse().unwrap());
    let mut ctx = TrickContext::new(
        "outside.test",
        "other.test",
        "198.51.100.25".parse().unwrap(),
    );
    ctx.local_domain = Some("example.test".into());
    ctx.target_host = Some("mx.example.test".into());
    let mut decided = 0;
    let mut relayed = Vec::new();
    for trick in battery() {
        let Some(rendered) = render(trick, &ctx) else {
            continue;
        };
        // A line the parser refuses is refused by the server before the policy is asked.
        let Ok(Command::Rcpt { to, .. }) = parse_command(rendered.rcpt_to.as_bytes()) else {
            continue;
        };
        decided += 1;
        let Ok(accepted) = policy.decide(&client, &resolve(&to)) else {
            continue;
        };
        if accepted.route().class != RouteClass::Local {
            let route = accepted.route();
            relayed.push(format!("{}: {} -> {route}", trick.id, rendered.rcpt_to));
        }
    }
    assert!(decided > 10, "only {decided} tricks reached the policy");
    assert!(relayed.is_empty(), "relayed:\n{}", relayed.join("\n"));
}
