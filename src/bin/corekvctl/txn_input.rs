//! etcdctl's `txn` input: compares, a blank line, success ops, a blank line, failure ops.
//!
//! A compare is `target("key") op "value"` with target `ver`/`version`, `c`/`create`,
//! `m`/`mod`, `val`/`value` or `lease` (hexadecimal), op `=`, `!=`, `>` or `<`; key and value
//! are Go string literals (`"..."` with escapes, or `` `raw` ``). An op line is a `put`, `get`
//! or `del` command line with the same flags as the commands; its words may be bare, `"..."`
//! (Go escapes) or `'...'` (literal). Input may end at end-of-file instead of the last blank
//! line (etcdctl insists on the blank line; accepting the shorter form changes nothing for
//! input etcdctl accepts).

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::unix::ffi::OsStringExt;

use clap::Parser;
use corekv::mvcc::{Compare, CompareResult, CompareTarget, RequestOp, TxnRequest};

use crate::requests::{self, DelArgs, GetArgs, PutArgs};
use crate::{exit, Failure};

/// Most bytes of transaction input read from stdin (the server's largest accepted
/// `--max-request-bytes`; a larger transaction could never be accepted).
pub const MAX_TXN_INPUT_BYTES: u64 = 64 << 20;

/// The interactive prompts, one per section, as etcdctl prints them.
pub const PROMPTS: [&str; 3] = [
    "compares:",
    "success requests (get, put, del):",
    "failure requests (get, put, del):",
];

/// Reads a whole transaction from `input`; with `prompts`, writes each section's prompt
/// there first (`txn -i`). Errors name the line and exit with [`exit::INVALID_INPUT`].
pub fn read_txn(
    input: &mut impl BufRead,
    mut prompts: Option<&mut dyn Write>,
) -> Result<TxnRequest, Failure> {
    let mut txn = TxnRequest::default();
    let mut line_no = 0usize;
    let mut consumed = 0u64;
    let mut eof = false;
    for (section, prompt) in PROMPTS.iter().enumerate() {
        if let Some(w) = prompts.as_mut() {
            writeln!(w, "{prompt}")
                .and_then(|_| w.flush())
                .map_err(|e| Failure::new(exit::IO, format!("writing the prompt: {e}")))?;
        }
        while !eof {
            let mut buf = Vec::new();
            let budget = MAX_TXN_INPUT_BYTES - consumed;
            let n = input
                .by_ref()
                .take(budget + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|e| {
                    Failure::new(exit::INVALID_INPUT, format!("reading the transaction: {e}"))
                })?;
            consumed += n as u64;
            if consumed > MAX_TXN_INPUT_BYTES {
                return Err(Failure::new(
                    exit::INVALID_INPUT,
                    format!("transaction input exceeds {MAX_TXN_INPUT_BYTES} bytes"),
                ));
            }
            if n == 0 {
                eof = true;
                break;
            }
            line_no += 1;
            let line = buf.trim_ascii();
            if line.is_empty() {
                break;
            }
            let at = |message: String| {
                Failure::new(exit::INVALID_INPUT, format!("line {line_no}: {message}"))
            };
            match section {
                0 => txn.compare.push(parse_compare(line).map_err(at)?),
                1 => txn.success.push(parse_op(line).map_err(at)?),
                _ => txn.failure.push(parse_op(line).map_err(at)?),
            }
        }
    }
    Ok(txn)
}

fn show(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

/// Parses one compare line, e.g. `mod("key1") > "0"`.
pub fn parse_compare(line: &[u8]) -> Result<Compare, String> {
    let malformed = |why: &str| format!("malformed comparison: {} ({why})", show(line));
    let open = line
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| malformed("expected target(\"key\")"))?;
    let target = std::str::from_utf8(line[..open].trim_ascii()).unwrap_or("");
    let mut pos = skip_spaces(line, open + 1);
    let (key, end) = parse_go_string(line, pos).map_err(|e| malformed(&format!("key: {e}")))?;
    pos = skip_spaces(line, end);
    if line.get(pos) != Some(&b')') {
        return Err(malformed("expected ')' after the key"));
    }
    pos = skip_spaces(line, pos + 1);
    let op_len = line[pos..]
        .iter()
        .take_while(|b| matches!(b, b'=' | b'!' | b'<' | b'>'))
        .count();
    let result = match &line[pos..pos + op_len] {
        b"=" => CompareResult::Equal,
        b"!=" => CompareResult::NotEqual,
        b">" => CompareResult::Greater,
        b"<" => CompareResult::Less,
        b"" => return Err(malformed("expected one of =, !=, >, < after the key")),
        other => {
            return Err(malformed(&format!(
                "unknown relation {:?}; expected one of =, !=, >, <",
                show(other)
            )))
        }
    };
    pos = skip_spaces(line, pos + op_len);
    let (value, end) = parse_go_string(line, pos).map_err(|e| malformed(&format!("value: {e}")))?;
    if skip_spaces(line, end) != line.len() {
        return Err(malformed("unexpected text after the value"));
    }
    let number = |radix: u32| -> Result<i64, String> {
        let text = std::str::from_utf8(&value).unwrap_or("");
        i64::from_str_radix(text, radix).map_err(|e| {
            let kind = if radix == 16 {
                "hexadecimal"
            } else {
                "decimal"
            };
            format!(
                "invalid txn compare request: {} (value {:?} is not a {kind} integer: {e})",
                show(line),
                show(&value)
            )
        })
    };
    let target = match target {
        "ver" | "version" => CompareTarget::Version(number(10)?),
        "c" | "create" => CompareTarget::CreateRevision(number(10)?),
        "m" | "mod" => CompareTarget::ModRevision(number(10)?),
        "val" | "value" => CompareTarget::Value(value),
        "lease" => CompareTarget::Lease(number(16)?),
        other => {
            return Err(malformed(&format!(
                "unknown target {other:?}; expected ver, create, mod, val or lease"
            )))
        }
    };
    Ok(Compare {
        result,
        key,
        range_end: Vec::new(),
        target,
    })
}

/// The op lines' grammar: the `put`, `get` and `del` commands with their flags.
#[derive(Parser, Debug)]
#[command(
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
enum TxnOp {
    /// A put.
    Put(PutArgs),
    /// A range read.
    Get(GetArgs),
    /// A delete.
    Del(DelArgs),
}

/// Parses one op line, e.g. `put key1 "some value" --prev-kv`.
pub fn parse_op(line: &[u8]) -> Result<RequestOp, String> {
    let invalid = |why: &str| format!("invalid txn request: {} ({why})", show(line));
    let words = argify(line).map_err(|e| invalid(&e))?;
    if words.len() < 2 {
        return Err(invalid("expected put, get or del and a key"));
    }
    let words = words.into_iter().map(OsString::from_vec);
    let op = TxnOp::try_parse_from(words).map_err(|e| {
        if !e.use_stderr() {
            return invalid("--help is not an op");
        }
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("").trim();
        invalid(first.strip_prefix("error: ").unwrap_or(first))
    })?;
    let failed = |f: Failure| invalid(&f.message);
    match op {
        TxnOp::Put(args) => {
            let value = match (&args.value, args.ignore_value) {
                (Some(v), _) => v.clone().into_vec(),
                (None, true) => Vec::new(),
                (None, false) => return Err(invalid("put needs a key and a value")),
            };
            Ok(RequestOp::Put(
                requests::put_request(&args, value).map_err(failed)?,
            ))
        }
        TxnOp::Get(args) => {
            if args.print_value_only {
                return Err(invalid("--print-value-only is not supported inside txn"));
            }
            Ok(RequestOp::Range(
                requests::get_request(&args).map_err(failed)?,
            ))
        }
        TxnOp::Del(args) => Ok(RequestOp::DeleteRange(
            requests::del_request(&args).map_err(failed)?,
        )),
    }
}

fn skip_spaces(line: &[u8], mut pos: usize) -> usize {
    while pos < line.len() && line[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

/// Splits an op line into words: bare words end at whitespace, `"..."` words take Go
/// escapes, `'...'` words are literal. A quoted word must be followed by whitespace or the
/// end of the line.
pub fn argify(line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut words = Vec::new();
    let mut pos = skip_spaces(line, 0);
    while pos < line.len() {
        let (word, end) = match line[pos] {
            b'"' => parse_go_string(line, pos)?,
            b'\'' => {
                let close = line[pos + 1..]
                    .iter()
                    .position(|&b| b == b'\'')
                    .ok_or_else(|| format!("unterminated ' quote at column {}", pos + 1))?;
                (line[pos + 1..pos + 1 + close].to_vec(), pos + 1 + close + 1)
            }
            _ => {
                let len = line[pos..]
                    .iter()
                    .take_while(|b| !b.is_ascii_whitespace())
                    .count();
                (line[pos..pos + len].to_vec(), pos + len)
            }
        };
        if end < line.len() && !line[end].is_ascii_whitespace() {
            return Err(format!(
                "unexpected character after the closing quote at column {}",
                end + 1
            ));
        }
        words.push(word);
        pos = skip_spaces(line, end);
    }
    Ok(words)
}

/// Parses a Go string literal starting at `line[pos]`: `"..."` with Go's escapes
/// (`\a \b \f \n \r \t \v \\ \"`, `\xHH` and `\OOO` bytes, `\uHHHH` and `\UHHHHHHHH`
/// characters) or `` `raw` ``. Returns the bytes and the position after the closing quote.
pub fn parse_go_string(line: &[u8], pos: usize) -> Result<(Vec<u8>, usize), String> {
    let col = pos + 1;
    match line.get(pos) {
        Some(b'`') => {
            let close = line[pos + 1..]
                .iter()
                .position(|&b| b == b'`')
                .ok_or_else(|| format!("unterminated ` quote at column {col}"))?;
            return Ok((line[pos + 1..pos + 1 + close].to_vec(), pos + close + 2));
        }
        Some(b'"') => {}
        _ => return Err(format!("expected a \"quoted\" string at column {col}")),
    }
    let mut out = Vec::new();
    let mut i = pos + 1;
    loop {
        let Some(&b) = line.get(i) else {
            return Err(format!("unterminated \" quote at column {col}"));
        };
        i += 1;
        match b {
            b'"' => return Ok((out, i)),
            b'\\' => {
                let Some(&e) = line.get(i) else {
                    return Err(format!("unterminated \" quote at column {col}"));
                };
                i += 1;
                let simple = match e {
                    b'a' => Some(7),
                    b'b' => Some(8),
                    b'f' => Some(12),
                    b'n' => Some(b'\n'),
                    b'r' => Some(b'\r'),
                    b't' => Some(b'\t'),
                    b'v' => Some(11),
                    b'\\' => Some(b'\\'),
                    b'"' => Some(b'"'),
                    _ => None,
                };
                if let Some(c) = simple {
                    out.push(c);
                    continue;
                }
                let digits = |i: usize, n: usize, radix: u32| -> Result<u32, String> {
                    let s = line
                        .get(i..i + n)
                        .ok_or_else(|| format!("short \\{} escape at column {}", e as char, i))?;
                    s.iter().try_fold(0u32, |acc, &d| {
                        (d as char)
                            .to_digit(radix)
                            .map(|v| acc * radix + v)
                            .ok_or_else(|| {
                                format!("bad digit in \\{} escape at column {}", e as char, i)
                            })
                    })
                };
                match e {
                    b'x' => {
                        out.push(digits(i, 2, 16)? as u8);
                        i += 2;
                    }
                    b'0'..=b'7' => {
                        i -= 1;
                        let v = digits(i, 3, 8)?;
                        if v > 255 {
                            return Err(format!("octal escape above \\377 at column {i}"));
                        }
                        out.push(v as u8);
                        i += 3;
                    }
                    b'u' | b'U' => {
                        let n = if e == b'u' { 4 } else { 8 };
                        let v = digits(i, n, 16)?;
                        let c = char::from_u32(v).ok_or_else(|| {
                            format!("\\{} escape {v:#x} is not a character", e as char)
                        })?;
                        let mut utf8 = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                        i += n;
                    }
                    other => {
                        return Err(format!(
                            "unknown escape \\{} at column {}",
                            other.escape_ascii(),
                            i - 1
                        ))
                    }
                }
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv::mvcc::{DeleteRangeRequest, PutRequest, SortOrder, SortTarget};

    fn s(line: &str) -> Vec<u8> {
        parse_go_string(line.as_bytes(), 0).unwrap().0
    }

    #[test]
    fn go_strings_decode_every_escape() {
        assert_eq!(s(r#""plain""#), b"plain");
        assert_eq!(s(r#""a\"b\\c""#), b"a\"b\\c");
        assert_eq!(s(r#""\a\b\f\n\r\t\v""#), b"\x07\x08\x0c\n\r\t\x0b");
        assert_eq!(s(r#""\x00\xff\x41""#), b"\x00\xffA");
        assert_eq!(s(r#""\101\377\000""#), b"A\xff\x00");
        assert_eq!(s(r#""\u00e9\U0001F600""#), "é😀".as_bytes());
        assert_eq!(s(r#""""#), b"");
        assert_eq!(s("`raw \\n \"`"), b"raw \\n \"");
        assert_eq!(s("\"sp ace\" tail"), b"sp ace");
        for bad in [
            r#""open"#,
            r#""\q""#,
            r#""\x4""#,
            r#""\xZZ""#,
            r#""\400""#,
            r#""\ud800""#,
            r#""\'""#,
            "`open",
            "bare",
            r#""ends with \"#,
        ] {
            assert!(
                parse_go_string(bad.as_bytes(), 0).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn argify_handles_quotes() {
        let words = argify(br#"put "a key" 'it''s' bare\n "\x41""#);
        assert!(words.is_err(), "quote followed by a quote is refused");
        let words = argify(br#"  put "a key"  'lit \n'  bare\n "\x41"  "#).unwrap();
        assert_eq!(
            words,
            vec![
                b"put".to_vec(),
                b"a key".to_vec(),
                b"lit \\n".to_vec(),
                b"bare\\n".to_vec(),
                b"A".to_vec()
            ]
        );
        assert!(argify(b"put 'open").is_err());
        assert!(argify(br#"put "k"x"#).is_err());
        assert_eq!(argify(b"").unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn compares_cover_every_target_and_relation() {
        let c = parse_compare(br#"mod("key1") > "0""#).unwrap();
        assert_eq!(
            (c.key.as_slice(), c.result, c.target),
            (
                &b"key1"[..],
                CompareResult::Greater,
                CompareTarget::ModRevision(0)
            )
        );
        let cases: [(&[u8], CompareResult, CompareTarget); 10] = [
            (
                br#"m("k") < "5""#,
                CompareResult::Less,
                CompareTarget::ModRevision(5),
            ),
            (
                br#"ver("k") < "3""#,
                CompareResult::Less,
                CompareTarget::Version(3),
            ),
            (
                br#"version("k") != "-1""#,
                CompareResult::NotEqual,
                CompareTarget::Version(-1),
            ),
            (
                br#"create("k") = "0""#,
                CompareResult::Equal,
                CompareTarget::CreateRevision(0),
            ),
            (
                br#"c("k")="7""#,
                CompareResult::Equal,
                CompareTarget::CreateRevision(7),
            ),
            (
                br#"val("k") = "x y""#,
                CompareResult::Equal,
                CompareTarget::Value(b"x y".to_vec()),
            ),
            (
                br#"value ( "k" ) != "\n""#,
                CompareResult::NotEqual,
                CompareTarget::Value(b"\n".to_vec()),
            ),
            (
                br#"lease("k") = "0""#,
                CompareResult::Equal,
                CompareTarget::Lease(0),
            ),
            (
                br#"lease("k") > "1f""#,
                CompareResult::Greater,
                CompareTarget::Lease(31),
            ),
            (
                b"val(`raw\\`) = `v`",
                CompareResult::Equal,
                CompareTarget::Value(b"v".to_vec()),
            ),
        ];
        for (line, result, target) in cases {
            let c = parse_compare(line).unwrap();
            assert_eq!((c.result, &c.target), (result, &target), "{}", show(line));
        }
        assert_eq!(parse_compare(b"val(`raw\\`) = `v`").unwrap().key, b"raw\\");
        for bad in [
            &br#"mod "k" > "0""#[..],
            br#"mod(k) > "0""#,
            br#"mod("k" > "0""#,
            br#"mod("k") >= "0""#,
            br#"mod("k") "0""#,
            br#"mod("k") > 0"#,
            br#"mod("k") > "x""#,
            br#"lease("k") = "zz""#,
            br#"ver("k") = "1.5""#,
            br#"size("k") = "1""#,
            br#"mod("k") > "0" extra"#,
        ] {
            let e = parse_compare(bad).unwrap_err();
            assert!(
                e.contains("comparison") || e.contains("compare"),
                "{}: {e}",
                show(bad)
            );
        }
    }

    #[test]
    fn ops_take_their_commands_flags() {
        assert_eq!(
            parse_op(br#"put key1 "overwrote key1""#).unwrap(),
            RequestOp::put("key1", "overwrote key1")
        );
        assert_eq!(
            parse_op(b"put k v --prev-kv --lease=1f --ignore-lease").unwrap(),
            RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 31,
                prev_kv: true,
                ignore_lease: true,
                ..PutRequest::default()
            })
        );
        assert_eq!(
            parse_op(b"put k --ignore-value").unwrap(),
            RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                ignore_value: true,
                ..PutRequest::default()
            })
        );
        assert_eq!(parse_op(b"get k").unwrap(), RequestOp::get("k"));
        match parse_op(
            b"get a --prefix --limit 2 --rev 5 --sort-by=VALUE --order=DESCEND --keys-only",
        )
        .unwrap()
        {
            RequestOp::Range(r) => {
                assert_eq!(
                    (r.key.as_slice(), r.range_end.as_slice()),
                    (&b"a"[..], &b"b"[..])
                );
                assert_eq!((r.limit, r.revision), (2, 5));
                assert_eq!(
                    (r.sort_target, r.sort_order),
                    (SortTarget::Value, SortOrder::Descend)
                );
                assert!(r.keys_only && !r.count_only);
            }
            other => panic!("{other:?}"),
        }
        match parse_op(b"get a z --count-only --consistency=s").unwrap() {
            RequestOp::Range(r) => {
                assert_eq!(r.range_end, b"z");
                assert!(r.count_only && r.serializable);
            }
            other => panic!("{other:?}"),
        }
        match parse_op(b"get b --from-key").unwrap() {
            RequestOp::Range(r) => assert_eq!(r.range_end, vec![0]),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_op(b"del k").unwrap(), RequestOp::delete("k"));
        assert_eq!(
            parse_op(b"del a/ --prefix --prev-kv").unwrap(),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a/".to_vec(),
                range_end: b"a0".to_vec(),
                prev_kv: true,
            })
        );
        assert_eq!(
            parse_op(b"del '' --from-key").unwrap(),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: vec![0],
                range_end: vec![0],
                prev_kv: false,
            })
        );
        assert_eq!(
            parse_op(br#"put "\xff\x00" -- -dash"#).unwrap(),
            RequestOp::put(b"\xff\x00".to_vec(), "-dash")
        );
        for bad in [
            &b"put"[..],
            b"put k",
            b"put k v w",
            b"put k v --ignore-value",
            b"put k v --lease=xyz",
            b"put k v --bogus",
            b"get k --print-value-only",
            b"get k --prefix --from-key",
            b"get k --order=sideways",
            b"del",
            b"delete k",
            b"watch k",
            b"--help k",
            b"get k --help",
            br#"put "k v"#,
        ] {
            let e = parse_op(bad).unwrap_err();
            assert!(e.starts_with("invalid txn request"), "{}: {e}", show(bad));
        }
    }

    #[test]
    fn reader_splits_sections_and_reports_lines() {
        let input = b"mod(\"k\") > \"0\"\nval(\"k\") = \"v\"\n\nput k w\n\nput k new\nget k\n\n";
        let t = read_txn(&mut &input[..], None).unwrap();
        assert_eq!(
            (t.compare.len(), t.success.len(), t.failure.len()),
            (2, 1, 2)
        );

        // End of input may replace the last blank lines; CRLF and indentation are trimmed.
        let t = read_txn(&mut &b"  ver(\"k\") = \"1\"\r\n\r\nput k v"[..], None).unwrap();
        assert_eq!(
            (t.compare.len(), t.success.len(), t.failure.len()),
            (1, 1, 0)
        );
        let t = read_txn(&mut &b""[..], None).unwrap();
        assert_eq!(t, TxnRequest::default());
        let t = read_txn(&mut &b"\n\nget k\n"[..], None).unwrap();
        assert_eq!(
            (t.compare.len(), t.success.len(), t.failure.len()),
            (0, 0, 1)
        );

        let mut prompts = Vec::new();
        read_txn(&mut &b"\nput a b\n\n\n"[..], Some(&mut prompts)).unwrap();
        assert_eq!(
            String::from_utf8(prompts).unwrap(),
            "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n"
        );

        let e = read_txn(&mut &b"mod(\"k\") > \"0\"\n\nput k v\nput k\n"[..], None).unwrap_err();
        assert_eq!(e.code, exit::INVALID_INPUT);
        assert!(
            e.message.starts_with("line 4: invalid txn request: put k"),
            "{}",
            e.message
        );
        let e = read_txn(&mut &b"put k v\n"[..], None).unwrap_err();
        assert!(
            e.message.starts_with("line 1: malformed comparison"),
            "{}",
            e.message
        );
    }

    #[test]
    fn reader_bounds_its_input() {
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                buf.fill(b'x');
                Ok(buf.len())
            }
        }
        let e = read_txn(&mut std::io::BufReader::new(Endless), None).unwrap_err();
        assert_eq!(e.code, exit::INVALID_INPUT);
        assert!(e.message.contains("exceeds"), "{}", e.message);
    }
}
