//! Any line: no panic, and whatever parses must read back the same from its `to_line`, since the
//! tester and the delivery agent write commands with it.

use relayward_protocol::command::parse_command;

pub fn run(line: &[u8]) {
    if let Ok(command) = parse_command(line) {
        let again = command.to_line();
        assert_eq!(parse_command(again.as_bytes()), Ok(command), "{again:?}");
    }
}
