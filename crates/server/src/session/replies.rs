//! Replies for syntax errors, shared by the verbs.

use relayward_protocol::command::CommandError;
use relayward_protocol::path::PathError;
use relayward_protocol::reply::Reply;

pub(super) fn command_error_reply(error: &CommandError) -> Reply {
    match error {
        CommandError::Unrecognized => Reply::enh(500, (5, 5, 1), "Command unrecognized"),
        CommandError::Syntax(what) => Reply::enh(501, (5, 5, 4), format!("Syntax error: {what}")),
        CommandError::BadPath(path_error) => path_error_reply(path_error),
        CommandError::BadParam(keyword) => Reply::enh(
            555,
            (5, 5, 4),
            format!("Unsupported or invalid parameter {keyword}"),
        ),
        CommandError::BadCharacter => Reply::enh(500, (5, 5, 2), "Invalid character in command"),
    }
}

fn path_error_reply(error: &PathError) -> Reply {
    Reply::enh(501, (5, 1, 3), format!("Bad address syntax: {error}"))
}
