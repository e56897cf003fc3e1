//! The argument definitions and the fast path of `tokend get`.

use super::*;

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn every_value_argument_takes_a_leading_hyphen() {
    use clap::CommandFactory;
    let top = Cli::command();
    let mut checked = 0;
    for cmd in std::iter::once(&top).chain(top.get_subcommands()) {
        for arg in cmd.get_arguments() {
            // A duration never begins with '-'.
            // exec's mappings would swallow the flags after them.
            let exempt = (cmd.get_name() == "login" && arg.get_id() == "timeout")
                || (cmd.get_name() == "exec"
                    && ["debounce", "mappings"].contains(&arg.get_id().as_str()));
            if arg.get_action().takes_values() && !exempt {
                assert!(
                    arg.is_allow_hyphen_values_set(),
                    "`tokend {} {}` refuses a value starting with '-'",
                    cmd.get_name(),
                    arg.get_id()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} value arguments found");
}

#[test]
fn hyphen_led_values_parse_as_values() {
    let cli = Cli::try_parse_from(argv(&[
        "tokend",
        "--socket",
        "-s.sock",
        "exchange",
        "-name",
        "--provider",
        "-p",
        "--code",
        "-tABC",
        "--redirect-uri",
        "-r",
        "--code-verifier",
        "--v-",
    ]))
    .expect("hyphen-led values");
    let Command::Exchange {
        name,
        provider,
        code,
        redirect_uri,
        code_verifier,
    } = cli.command
    else {
        panic!("not exchange: {:?}", cli.command)
    };
    assert_eq!(cli.socket, Some(PathBuf::from("-s.sock")));
    assert_eq!(
        (name.as_str(), provider.as_str(), redirect_uri.as_str()),
        ("-name", "-p", "-r")
    );
    assert_eq!(code.as_ref().map(Secret::expose), Some("-tABC"));
    assert_eq!(code_verifier.as_ref().map(Secret::expose), Some("--v-"));
}

#[test]
fn hyphen_led_names_parse_as_names() {
    for (args, want) in [
        (&["tokend", "get", "-tABC"][..], "-tABC"),
        (&["tokend", "get", "--json", "-x"], "-x"),
        (&["tokend", "refresh", "-x"], "-x"),
        (&["tokend", "watch", "-x"], "-x"),
        (&["tokend", "remove", "-x"], "-x"),
        (&["tokend", "add", "-x", "-p", "-q"], "-x"),
    ] {
        let cli = Cli::try_parse_from(argv(args)).expect("valid");
        let name = match cli.command {
            Command::Get { name, .. }
            | Command::Refresh { name }
            | Command::Watch { name, .. }
            | Command::Remove { name, .. }
            | Command::Add { name, .. } => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(name, want, "{args:?}");
    }
}

#[test]
fn exec_takes_mappings_flags_and_a_command() {
    let cli = Cli::try_parse_from(argv(&[
        "tokend",
        "exec",
        "a=A",
        "b.c=B",
        "--on-new-token",
        "signal:HUP",
        "--debounce",
        "200ms",
        "--",
        "sh",
        "-c",
        "x",
    ]))
    .expect("valid");
    let Command::Exec {
        mappings,
        on_new_token,
        debounce,
        command,
    } = cli.command
    else {
        panic!("not exec")
    };
    let names: Vec<_> = mappings.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b.c"]);
    assert_eq!(on_new_token, exec::OnNewToken::Signal(libc::SIGHUP));
    assert_eq!(debounce, std::time::Duration::from_millis(200));
    assert_eq!(command, argv(&["sh", "-c", "x"]));
    assert!(Cli::try_parse_from(argv(&["tokend", "exec", "a=A"])).is_err());
}

#[test]
fn known_flags_stay_flags() {
    assert!(Cli::try_parse_from(argv(&["tokend", "get", "x", "--json"])).is_ok());
    let cli = Cli::try_parse_from(argv(&["tokend", "status", "--json"])).unwrap();
    assert!(matches!(
        cli.command,
        Command::Status {
            name: None,
            json: true
        }
    ));
}

#[test]
fn parsed_exchange_debug_shows_no_code() {
    let cli = Cli::try_parse_from(argv(&[
        "tokend",
        "exchange",
        "n",
        "-p",
        "p",
        "--code",
        "the-code-value",
        "--redirect-uri",
        "u",
        "--code-verifier",
        "the-verifier-value",
    ]))
    .unwrap();
    let debug = format!("{cli:?}");
    assert!(!debug.contains("the-code-value"), "{debug}");
    assert!(!debug.contains("the-verifier-value"), "{debug}");
}

#[test]
fn plain_get_reads_what_clap_reads() {
    for args in [
        &["tokend", "get", "c"][..],
        &["tokend", "get", "a b/ü"],
        &["tokend", "get", ""],
        &["tokend", "get", "help"],
        &["tokend", "get", "get"],
    ] {
        let name = plain_get(argv(args)).expect("the plain form");
        // What `main` then runs, as `run` would run it.
        let plain = Cli {
            socket: None,
            command: Command::Get {
                name,
                min_valid: None,
                json: false,
                dpop: None,
                nonce: None,
            },
        };
        let clap = Cli::try_parse_from(argv(args)).expect("valid for clap");
        assert_eq!(format!("{plain:?}"), format!("{clap:?}"), "{args:?}");
    }
}

#[test]
fn plain_get_leaves_every_other_form_to_clap() {
    for args in [
        &["tokend"][..],
        &["tokend", "get"],
        &["tokend", "get", "-h"],
        &["tokend", "get", "--json"],
        &["tokend", "get", "c", "--json"],
        &["tokend", "get", "--min-valid", "60"],
        &["tokend", "get", "-tABC"],
        &["tokend", "--socket", "/s", "get", "c"],
        &["tokend", "status", "c"],
        &["tokend", "Get", "c"],
    ] {
        assert!(plain_get(argv(args)).is_none(), "{args:?}");
    }
    use std::os::unix::ffi::OsStringExt;
    let not_utf8 = vec![
        OsString::from("tokend"),
        OsString::from("get"),
        OsString::from_vec(vec![0x66, 0xff]),
    ];
    assert!(plain_get(not_utf8).is_none());
}
