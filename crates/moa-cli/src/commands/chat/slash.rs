//! Chat's slash commands: parsed here, applied by the session.

/// A slash command.
#[derive(Debug, PartialEq)]
pub enum Slash {
    Help,
    Preset(String),
    Proposers(Vec<String>),
    Aggregator(String),
    Rounds(usize),
    Temperature(f64),
    Show,
    Save(String),
    Clear,
    Usage,
    Exit,
}

/// What `/help` prints.
pub const HELP: &str = "\
/help                  this list
/preset NAME           switch to another preset (`moa presets` lists them)
/proposers M1,M2,...   proposer models (provider:model) for every proposer layer
/aggregator M          the aggregator model
/rounds N              proposer layers (MoA layers = N + 1)
/temperature X         temperature for every agent
/show                  the last turn's proposals
/save FILE             the conversation and every turn's trace, as JSON
/clear                 forget the conversation so far
/usage                 tokens used so far, per model
/exit, /quit           leave (so do exit, quit and Ctrl-D)
End a line with \\ to continue on the next one. Ctrl-C cancels an answer in progress.";

/// Parses `line` if it is a slash command (`Ok(None)` if it is not one).
pub fn parse(line: &str) -> Result<Option<Slash>, String> {
    let line = line.trim();
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(None);
    };
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    let need = |what: &str| -> Result<String, String> {
        if arg.is_empty() {
            Err(format!("/{name} needs {what}"))
        } else {
            Ok(arg.to_string())
        }
    };
    let command = match name {
        "help" | "?" => Slash::Help,
        "preset" => Slash::Preset(need("a preset name")?),
        "proposers" => Slash::Proposers(
            need("models, e.g. /proposers together:a,together:b")?
                .split([',', ' '])
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        "aggregator" | "model" => Slash::Aggregator(need("a model")?),
        "rounds" => Slash::Rounds(
            need("a number")?
                .parse()
                .map_err(|_| format!("/rounds takes a whole number, not `{arg}`"))?,
        ),
        "temperature" => match need("a number")?.parse::<f64>() {
            Ok(t) if t.is_finite() && t >= 0.0 => Slash::Temperature(t),
            _ => {
                return Err(format!(
                    "/temperature takes a number that is 0 or more, not `{arg}`"
                ))
            }
        },
        "show" => Slash::Show,
        "save" => Slash::Save(need("a file name")?),
        "clear" => Slash::Clear,
        "usage" => Slash::Usage,
        "exit" | "quit" => Slash::Exit,
        other => return Err(format!("unknown command /{other}; /help lists them")),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("hello"), Ok(None));
        assert_eq!(parse("/help"), Ok(Some(Slash::Help)));
        assert_eq!(parse(" /rounds 2 "), Ok(Some(Slash::Rounds(2))));
        assert_eq!(
            parse("/proposers a:b, c:d"),
            Ok(Some(Slash::Proposers(vec!["a:b".into(), "c:d".into()])))
        );
        assert_eq!(parse("/temperature 0.2"), Ok(Some(Slash::Temperature(0.2))));
        assert_eq!(
            parse("/save out.json"),
            Ok(Some(Slash::Save("out.json".into())))
        );
        assert_eq!(parse("/quit"), Ok(Some(Slash::Exit)));
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        assert_eq!(
            parse("/rounds two"),
            Err("/rounds takes a whole number, not `two`".into())
        );
        assert_eq!(parse("/preset"), Err("/preset needs a preset name".into()));
        assert_eq!(
            parse("/frobnicate"),
            Err("unknown command /frobnicate; /help lists them".into())
        );
        assert!(parse("/temperature -1").is_err());
    }
}
