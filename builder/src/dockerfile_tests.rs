use super::*;

fn kinds(text: &str) -> Vec<Kind> {
    parse(text, "Dockerfile").unwrap().instructions.into_iter().map(|i| i.kind).collect()
}

fn error(text: &str) -> String {
    parse(text, "Dockerfile").unwrap_err().to_string()
}

fn words(list: &[&str]) -> Words {
    Words { words: list.iter().map(|s| s.to_string()).collect(), json: false }
}

fn copy(list: &[&str]) -> CopyArgs {
    CopyArgs { from: None, chown: None, chmod: None, checksum: None, words: words(list), heredocs: Vec::new() }
}

#[test]
fn continuations_and_comments() {
    let text = "# syntax comment\nFROM scratch\nLABEL a=b \\\n  # inner comment\n\n      c=\"d e\"\nCOPY x \\\n /y\n";
    let parsed = parse(text, "Dockerfile").unwrap().instructions;
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[1].line, 3);
    assert_eq!(parsed[1].kind, Kind::Label(vec![("a".into(), "b".into()), ("c".into(), "\"d e\"".into())]));
    assert_eq!(parsed[2].line, 7);
    assert_eq!(parsed[2].kind, Kind::Copy(copy(&["x", "/y"])));
}

#[test]
fn json_versus_shell_form() {
    let k = kinds("FROM scratch\nCMD [\"/app\", \"-v\"]\nENTRYPOINT run --fast\nCMD [broken\n");
    assert_eq!(k[1], Kind::Cmd(Command::Exec(vec!["/app".into(), "-v".into()])));
    assert_eq!(k[2], Kind::Entrypoint(Command::Shell("run --fast".into())));
    if let Kind::Entrypoint(c) = &k[2] {
        assert_eq!(c.argv(&["/bin/sh".into(), "-c".into()]), vec!["/bin/sh", "-c", "run --fast"]);
    }
    assert_eq!(k[3], Kind::Cmd(Command::Shell("[broken".into())));
    let k = kinds("FROM scratch\nCOPY [\"a b\", \"/c/\"]\n");
    let mut json = copy(&["a b", "/c/"]);
    json.words.json = true;
    assert_eq!(k[1], Kind::Copy(json));
}

#[test]
fn env_forms() {
    let k = kinds("FROM scratch\nENV a=b c=\"d e\"\nENV f g h\n");
    assert_eq!(k[1], Kind::Env(vec![("a".into(), "b".into()), ("c".into(), "\"d e\"".into())]));
    assert_eq!(k[2], Kind::Env(vec![("f".into(), "g h".into())]));
    assert_eq!(error("FROM scratch\nENV a=1 =x\n"), "Dockerfile:2:9: ENV: expected NAME=VALUE, got \"=x\"");
}

#[test]
fn errors_name_file_line_and_column() {
    assert_eq!(error("FROM scratch\n\nFOO bar\n"), "Dockerfile:3:1: unknown instruction \"FOO\"");
    assert_eq!(error("FROM scratch\n# c\n  MAINTAINER me\n"), "Dockerfile:3:3: MAINTAINER is not supported yet");
    assert_eq!(error("FROM scratch\nCOPY \\\n  a \\\n  b\nBAR\n"), "Dockerfile:5:1: unknown instruction \"BAR\"");
    assert_eq!(
        error("FROM scratch\nCOPY \\\n  --chown=1 --bogus=1 a /b\n"),
        "Dockerfile:3:13: COPY flag --bogus is not supported"
    );
    assert_eq!(error("FROM scratch\nHEALTHCHECK --interval=5x CMD true\n"), "Dockerfile:2:13: HEALTHCHECK: invalid duration \"5x\" (want e.g. 30s, 1m30s, 500ms)");
    assert_eq!(error("FROM scratch\nARG 1x\n"), "Dockerfile:2:5: ARG: invalid name \"1x\"");
}

#[test]
fn structural_errors() {
    assert_eq!(error("COPY a b\n"), "Dockerfile:1:1: the first instruction must be FROM, not COPY");
    assert_eq!(error("# only\n"), "Dockerfile: no instructions (a Dockerfile starts with FROM)");
    assert_eq!(error("ARG A\n"), "Dockerfile: no instructions (a Dockerfile starts with FROM)");
    assert!(error("FROM scratch AS a\nFROM scratch AS A\n").contains("Dockerfile:2:1: stage name \"a\" is used twice"));
    assert!(error("FROM scratch\nCOPY a\n").contains("Dockerfile:2:6: COPY requires"));
    assert!(error("FROM scratch\nLABEL a=\"b\n").contains("unterminated double quote"));
    assert_eq!(error("FROM scratch AS 9x\n"), "Dockerfile:1:17: invalid stage name \"9x\" (want letters, digits, '-', '_' or '.', starting with a letter)");
}

#[test]
fn escape_directive() {
    let text = "# escape=`\nFROM scratch\nCOPY a `\n  C:\\dir\\ /x\n";
    let parsed = parse(text, "Dockerfile").unwrap();
    assert_eq!(parsed.escape, '`');
    assert_eq!(parsed.instructions[1].kind, Kind::Copy(copy(&["a", "C:\\dir\\", "/x"])));
    // After an instruction, a directive is just a comment.
    assert_eq!(parse("FROM scratch\n# escape=`\n", "D").unwrap().escape, '\\');
    assert_eq!(error("# escape=x\nFROM scratch\n"), "Dockerfile:1:1: parser directive: invalid escape \"x\" (want \\ or `)");
}

#[test]
fn from_platform_flag() {
    let k = kinds("FROM --platform=linux/arm64 alpine AS a\nFROM --platform=$P scratch\n");
    let platform = |p: &str| Some(p.to_string());
    assert_eq!(k[0], Kind::From { image: "alpine".into(), name: Some("a".into()), platform: platform("linux/arm64") });
    assert_eq!(k[1], Kind::From { image: "scratch".into(), name: None, platform: platform("$P") });
    assert_eq!(error("FROM --pull=always scratch\n"), "Dockerfile:1:6: FROM flag --pull is not supported");
    assert_eq!(error("FROM --platform= scratch\n"), "Dockerfile:1:6: FROM flag --platform requires a value (--platform=VALUE)");
}

#[test]
fn args_and_stages() {
    let k = kinds("ARG BASE=scratch V\nFROM $BASE AS Build\nARG X=${V:-1}\nCOPY --from=build --chown=1:2 --chmod=0755 a b /c/\n");
    assert_eq!(k[0], Kind::Arg(vec![("BASE".into(), Some("scratch".into())), ("V".into(), None)]));
    assert_eq!(k[1], Kind::From { image: "$BASE".into(), name: Some("build".into()), platform: None });
    assert_eq!(k[2], Kind::Arg(vec![("X".into(), Some("${V:-1}".into()))]));
    let mut args = copy(&["a", "b", "/c/"]);
    args.from = Some("build".into());
    args.chown = Some("1:2".into());
    args.chmod = Some("0755".into());
    assert_eq!(k[3], Kind::Copy(args));
}

#[test]
fn heredocs() {
    let text = "FROM scratch\nCOPY <<EOF <<-\"RAW\" /etc/\nhello $X\nEOF\n\tkeep $X\n\tRAW\nCMD x\n";
    let parsed = parse(text, "Dockerfile").unwrap().instructions;
    let Kind::Copy(args) = &parsed[1].kind else { panic!("{parsed:?}") };
    assert_eq!(args.words, words(&["/etc/"]));
    assert_eq!(args.heredocs.len(), 2);
    assert_eq!((args.heredocs[0].name.as_str(), args.heredocs[0].content.as_str(), args.heredocs[0].expand), ("EOF", "hello $X\n", true));
    assert_eq!((args.heredocs[1].name.as_str(), args.heredocs[1].content.as_str(), args.heredocs[1].expand), ("RAW", "keep $X\n", false));
    assert_eq!(parsed[2].line, 7);
    assert!(error("FROM scratch\nCOPY <<.. /x\n..\n").contains("Dockerfile:2:6: invalid heredoc marker \"<<..\""));
    assert_eq!(error("FROM scratch\nCOPY <<EOF /x\nno end\n"), "Dockerfile:2:6: unterminated heredoc EOF (no line \"EOF\" after it)");
}

fn run(network: Network, command: Command, heredocs: Vec<Heredoc>) -> Kind {
    Kind::Run(RunArgs { network, command, heredocs })
}

#[test]
fn run_forms_flags_and_heredocs() {
    let text = "FROM scratch\nRUN echo \"$A\" && \\\n  exit 0\nRUN [\"/t.wasm\", \"x\"]\nRUN --network=host wget x\n\
                RUN <<EOF\nset -e\n  echo $B\nEOF\nRUN cat <<-'A' >/a && cat <<B>/b\n\tone\n\tA\ntwo\nB\nRUN cat <<<\"here\"\nCMD x\n";
    let parsed = parse(text, "Dockerfile").unwrap().instructions;
    let k: Vec<&Kind> = parsed.iter().map(|i| &i.kind).collect();
    assert_eq!(*k[1], run(Network::None, Command::Shell("echo \"$A\" &&   exit 0".into()), vec![]));
    assert_eq!(*k[2], run(Network::None, Command::Exec(vec!["/t.wasm".into(), "x".into()]), vec![]));
    assert_eq!(*k[3], run(Network::Host, Command::Shell("wget x".into()), vec![]));
    let doc = Heredoc { marker: "<<EOF".into(), name: "EOF".into(), content: "set -e\n  echo $B\n".into(), expand: true };
    assert_eq!(*k[4], run(Network::None, Command::Shell("<<EOF".into()), vec![doc]));
    let Kind::Run(two) = k[5] else { panic!("{:?}", k[5]) };
    let names: Vec<(&str, &str, bool)> = two.heredocs.iter().map(|h| (h.name.as_str(), h.content.as_str(), h.expand)).collect();
    assert_eq!(names, vec![("A", "one\n", false), ("B", "two\n", true)]);
    assert_eq!(*k[6], run(Network::None, Command::Shell("cat <<<\"here\"".into()), vec![]), "a here-string is no heredoc");
    assert_eq!(parsed[7].line, 16);

    assert_eq!(error("FROM scratch\nRUN --mount=type=cache,target=/x make\n"), "Dockerfile:2:5: RUN flag --mount is not supported");
    assert_eq!(error("FROM scratch\nRUN --security=insecure make\n"), "Dockerfile:2:5: RUN flag --security is not supported");
    assert_eq!(
        error("FROM scratch\nRUN --network=default make\n"),
        "Dockerfile:2:5: RUN flag --network: invalid value \"default\" (want none or host)"
    );
    assert_eq!(error("FROM scratch\nRUN --network=none\n"), "Dockerfile:2:19: RUN requires a command");
    assert_eq!(error("FROM scratch\nRUN []\n"), "Dockerfile:2:5: RUN requires a command");
    assert_eq!(error("FROM scratch\nRUN <<EOF\nno end\n"), "Dockerfile:2:5: unterminated heredoc EOF (no line \"EOF\" after it)");
}

#[test]
fn config_instructions() {
    let k = kinds(
        "FROM scratch\nSHELL [\"/bin/ash\", \"-eo\"]\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x\n\
         HEALTHCHECK NONE\nHEALTHCHECK CMD [\"/probe\"]\nONBUILD COPY . /app\nSTOPSIGNAL SIGTERM\n",
    );
    assert_eq!(k[1], Kind::Shell(vec!["/bin/ash".into(), "-eo".into()]));
    let Kind::Healthcheck(Some(check)) = &k[2] else { panic!("{:?}", k[2]) };
    assert_eq!(check.test, vec!["CMD-SHELL", "curl -f x"]);
    assert_eq!(check.interval, Some(90_000_000_000));
    assert_eq!(check.retries, Some(3));
    assert_eq!(k[3], Kind::Healthcheck(None));
    let Kind::Healthcheck(Some(check)) = &k[4] else { panic!() };
    assert_eq!(check.test, vec!["CMD", "/probe"]);
    assert_eq!(k[5], Kind::OnBuild("COPY . /app".into()));
    assert!(error("FROM scratch\nSHELL sh -c\n").contains("Dockerfile:2:7: SHELL requires a JSON array"));
    assert!(error("FROM scratch\nONBUILD FROM x\n").contains("ONBUILD cannot trigger FROM"));
    assert!(error("FROM scratch\nONBUILD FOO x\n").contains("unknown instruction"));
}
