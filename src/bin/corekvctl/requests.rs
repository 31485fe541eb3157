//! The `put`, `get` and `del` flags (shared by the commands and by the op lines of `txn`) and
//! their translation into requests, with etcdctl's argument rules.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use clap::Args;
use corekv::client::txn::prefix_end;
use corekv::mvcc::{DeleteRangeRequest, PutRequest, RangeRequest, SortOrder, SortTarget};

use crate::{exit, Failure};

/// Flags of `put`.
#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    /// The key.
    pub key: OsString,
    /// The value; read from standard input when omitted (not inside `txn`).
    pub value: Option<OsString>,
    /// Lease ID (hexadecimal) to attach to the key; 0 for none.
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// Return the previous key-value pair before modification.
    #[arg(long)]
    pub prev_kv: bool,
    /// Update the key using its current value.
    #[arg(long)]
    pub ignore_value: bool,
    /// Update the key using its current lease.
    #[arg(long)]
    pub ignore_lease: bool,
}

/// Flags of `get`.
#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// The key (with --prefix or --from-key, the start of the range; "" means all keys).
    pub key: OsString,
    /// End of the range [key, range_end).
    pub range_end: Option<OsString>,
    /// Linearizable (l) or serializable (s).
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Order of results: ASCEND or DESCEND (ASCEND by default).
    #[arg(long, default_value = "")]
    pub order: String,
    /// Sort target: CREATE, KEY, MODIFY, VALUE or VERSION.
    #[arg(long, default_value = "")]
    pub sort_by: String,
    /// Maximum number of results (0: no limit).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub limit: i64,
    /// Get keys with a matching prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Get keys greater than or equal to the given key (byte order).
    #[arg(long)]
    pub from_key: bool,
    /// The revision to read at (0: current).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub rev: i64,
    /// Get only the keys.
    #[arg(long)]
    pub keys_only: bool,
    /// Get only the count.
    #[arg(long)]
    pub count_only: bool,
    /// Print only values (simple output format only).
    #[arg(long)]
    pub print_value_only: bool,
}

/// Flags of `del`.
#[derive(Args, Debug, Clone)]
pub struct DelArgs {
    /// The key (with --prefix or --from-key, the start of the range; "" means all keys).
    pub key: OsString,
    /// End of the range [key, range_end).
    pub range_end: Option<OsString>,
    /// Delete keys with a matching prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Return the deleted key-value pairs.
    #[arg(long)]
    pub prev_kv: bool,
    /// Delete keys greater than or equal to the given key (byte order).
    #[arg(long)]
    pub from_key: bool,
}

fn bytes(s: &OsString) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn bad_args(message: impl Into<String>) -> Failure {
    Failure::new(exit::BAD_ARGS, message)
}

fn bad_feature(message: impl Into<String>) -> Failure {
    Failure::new(exit::BAD_FEATURE, message)
}

/// Parses a lease ID as etcdctl does: hexadecimal, optional sign, no `0x`.
pub fn parse_lease(s: &str) -> Result<i64, Failure> {
    i64::from_str_radix(s, 16)
        .map_err(|e| bad_args(format!("bad lease ID ({s:?}: {e}), expecting ID in hex")))
}

/// The put request of `args` with `value` (the caller resolved value vs stdin).
pub fn put_request(args: &PutArgs, value: Vec<u8>) -> Result<PutRequest, Failure> {
    if args.ignore_value && args.value.is_some() {
        return Err(bad_args(
            "put command needs only 1 argument when 'ignore-value' is set",
        ));
    }
    Ok(PutRequest {
        key: bytes(&args.key),
        value,
        lease: parse_lease(&args.lease)?,
        prev_kv: args.prev_kv,
        ignore_value: args.ignore_value,
        ignore_lease: args.ignore_lease,
    })
}

/// Key and range end of a `get`/`del` after `--prefix` / `--from-key` / `range_end`
/// (etcdctl: an empty key with either flag means "every key").
fn key_range(
    command: &str,
    key: &OsString,
    range_end: &Option<OsString>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    if prefix && from_key {
        return Err(bad_args(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        ));
    }
    let key = bytes(key);
    if let Some(end) = range_end {
        if prefix || from_key {
            return Err(bad_args(format!(
                "{command}: too many arguments, only accept one argument when `--prefix` or `--from-key` is set"
            )));
        }
        return Ok((key, bytes(end)));
    }
    if (prefix || from_key) && key.is_empty() {
        return Ok((vec![0], vec![0]));
    }
    if prefix {
        let end = prefix_end(&key);
        return Ok((key, end));
    }
    if from_key {
        return Ok((key, vec![0]));
    }
    Ok((key, Vec::new()))
}

/// The range request of `args`.
pub fn get_request(args: &GetArgs) -> Result<RangeRequest, Failure> {
    if args.keys_only && args.count_only {
        return Err(bad_args(
            "`--keys-only` and `--count-only` cannot be set at the same time, choose one",
        ));
    }
    let (key, range_end) = key_range(
        "get",
        &args.key,
        &args.range_end,
        args.prefix,
        args.from_key,
    )?;
    let serializable = match args.consistency.as_str() {
        "l" => false,
        "s" => true,
        other => {
            return Err(bad_feature(format!(
                "unknown consistency flag {other:?} (expected l or s)"
            )))
        }
    };
    let mut sort_order = match args.order.to_uppercase().as_str() {
        "" => SortOrder::None,
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        _ => {
            return Err(bad_feature(format!(
                "bad sort order {:?} (expected ASCEND or DESCEND)",
                args.order
            )))
        }
    };
    let sort_target = match args.sort_by.to_uppercase().as_str() {
        "" | "KEY" => SortTarget::Key,
        "CREATE" => SortTarget::Create,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => {
            return Err(bad_feature(format!(
                "bad sort target {:?} (expected CREATE, KEY, MODIFY, VALUE or VERSION)",
                args.sort_by
            )))
        }
    };
    // Results come in ascending key order anyway; as etcd's client does, do not ask the
    // server to sort them (a sort makes it read the whole range before applying the limit).
    if sort_target == SortTarget::Key && sort_order == SortOrder::Ascend {
        sort_order = SortOrder::None;
    }
    Ok(RangeRequest {
        key,
        range_end,
        limit: args.limit,
        revision: args.rev.max(0),
        sort_order,
        sort_target,
        serializable,
        keys_only: args.keys_only,
        count_only: args.count_only,
        ..RangeRequest::default()
    })
}

/// The delete request of `args`.
pub fn del_request(args: &DelArgs) -> Result<DeleteRangeRequest, Failure> {
    let (key, range_end) = key_range(
        "del",
        &args.key,
        &args.range_end,
        args.prefix,
        args.from_key,
    )?;
    Ok(DeleteRangeRequest {
        key,
        range_end,
        prev_kv: args.prev_kv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(key: &str) -> GetArgs {
        GetArgs {
            key: key.into(),
            range_end: None,
            consistency: "l".into(),
            order: String::new(),
            sort_by: String::new(),
            limit: 0,
            prefix: false,
            from_key: false,
            rev: 0,
            keys_only: false,
            count_only: false,
            print_value_only: false,
        }
    }

    #[test]
    fn ranges_follow_etcdctl() {
        let r = get_request(&GetArgs {
            prefix: true,
            ..get("a/")
        })
        .unwrap();
        assert_eq!((r.key, r.range_end), (b"a/".to_vec(), b"a0".to_vec()));
        let r = get_request(&GetArgs {
            prefix: true,
            ..get("")
        })
        .unwrap();
        assert_eq!((r.key, r.range_end), (vec![0], vec![0]));
        let r = get_request(&GetArgs {
            from_key: true,
            ..get("b")
        })
        .unwrap();
        assert_eq!((r.key, r.range_end), (b"b".to_vec(), vec![0]));
        let r = get_request(&GetArgs {
            range_end: Some("c".into()),
            ..get("a")
        })
        .unwrap();
        assert_eq!((r.key, r.range_end), (b"a".to_vec(), b"c".to_vec()));
        let e = get_request(&GetArgs {
            prefix: true,
            from_key: true,
            ..get("a")
        })
        .unwrap_err();
        assert_eq!(e.code, exit::BAD_ARGS);
        let e = get_request(&GetArgs {
            prefix: true,
            range_end: Some("z".into()),
            ..get("a")
        })
        .unwrap_err();
        assert_eq!(e.code, exit::BAD_ARGS);
    }

    #[test]
    fn sort_and_consistency_values_are_checked() {
        let r = get_request(&GetArgs {
            order: "descend".into(),
            sort_by: "modify".into(),
            consistency: "s".into(),
            ..get("a")
        })
        .unwrap();
        assert_eq!(
            (r.sort_order, r.sort_target, r.serializable),
            (SortOrder::Descend, SortTarget::Mod, true)
        );
        let r = get_request(&GetArgs {
            order: "ASCEND".into(),
            sort_by: "KEY".into(),
            ..get("a")
        })
        .unwrap();
        assert_eq!(
            r.sort_order,
            SortOrder::None,
            "key-ascending is the default"
        );
        for bad in [
            GetArgs {
                order: "up".into(),
                ..get("a")
            },
            GetArgs {
                sort_by: "size".into(),
                ..get("a")
            },
            GetArgs {
                consistency: "x".into(),
                ..get("a")
            },
        ] {
            assert_eq!(get_request(&bad).unwrap_err().code, exit::BAD_FEATURE);
        }
        let e = get_request(&GetArgs {
            keys_only: true,
            count_only: true,
            ..get("a")
        })
        .unwrap_err();
        assert_eq!(e.code, exit::BAD_ARGS);
    }

    #[test]
    fn lease_ids_are_hex() {
        assert_eq!(parse_lease("0").unwrap(), 0);
        assert_eq!(parse_lease("ff").unwrap(), 255);
        assert_eq!(parse_lease("694d77aa9e38260f").unwrap(), 0x694d77aa9e38260f);
        assert_eq!(parse_lease("xyz").unwrap_err().code, exit::BAD_ARGS);
        assert_eq!(parse_lease("0x10").unwrap_err().code, exit::BAD_ARGS);
    }
}
