//! The request bodies this backend sends to Firecracker, with exactly the
//! field names of Firecracker's published API definition
//! (`src/firecracker/swagger/firecracker.yaml`). Firecracker rejects
//! unknown fields, so optional fields are left out rather than sent empty.
//!
//! `api_fields.json` beside this file is our own record of that
//! definition for the resources we use (allowed fields, required fields,
//! types and enum values, and the endpoints); the tests below check every
//! request the backend builds against it, and, when
//! `SMOLVM_FIRECRACKER_SWAGGER` points at a `firecracker.yaml`, check the
//! record itself against that file.

use serde::Serialize;

/// `PUT /machine-config` (definition `MachineConfiguration`).
#[derive(Debug, Clone, Serialize)]
pub struct MachineConfiguration {
    /// vCPUs (1 or an even number up to 32).
    pub vcpu_count: u32,
    /// Guest memory.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (off).
    pub smt: bool,
    /// Dirty page tracking: needed for Diff snapshots.
    pub track_dirty_pages: bool,
}

/// `PUT /boot-source` (definition `BootSource`).
#[derive(Debug, Clone, Serialize)]
pub struct BootSource {
    /// ELF vmlinux.
    pub kernel_image_path: String,
    /// Initramfs, if the image has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    pub boot_args: String,
}

/// Block device cache strategy (`Drive.cache_type`).
#[derive(Debug, Clone, Copy, Serialize)]
pub enum CacheType {
    /// Guest flushes become host fsyncs.
    Writeback,
}

/// `PUT /drives/{drive_id}` (definition `Drive`).
#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    /// Drive id (also the path parameter).
    pub drive_id: String,
    /// File on the host (relative to Firecracker's working directory).
    pub path_on_host: String,
    /// Whether Firecracker adds `root=` for it.
    pub is_root_device: bool,
    /// Read-only.
    pub is_read_only: bool,
    /// Cache strategy.
    pub cache_type: CacheType,
}

/// `PUT /network-interfaces/{iface_id}` (definition `NetworkInterface`).
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInterface {
    /// Interface id (also the path parameter).
    pub iface_id: String,
    /// Host tap device name.
    pub host_dev_name: String,
    /// Guest MAC address.
    pub guest_mac: String,
}

/// `PUT /vsock` (definition `Vsock`).
#[derive(Debug, Clone, Serialize)]
pub struct Vsock {
    /// Guest context id (>= 3).
    pub guest_cid: u32,
    /// Host unix socket for host-initiated connections.
    pub uds_path: String,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum ActionType {
    /// Boot the configured machine.
    InstanceStart,
    /// Ask an x86 guest to reboot (Firecracker then exits).
    SendCtrlAltDel,
}

/// `PUT /actions` (definition `InstanceActionInfo`).
#[derive(Debug, Clone, Serialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum VmState {
    /// vCPUs stopped.
    Paused,
    /// vCPUs running.
    Resumed,
}

/// `PATCH /vm` (definition `Vm`).
#[derive(Debug, Clone, Serialize)]
pub struct Vm {
    /// Desired state.
    pub state: VmState,
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SnapshotKind {
    /// All guest memory.
    Full,
    /// Only pages dirtied since the previous snapshot (or the load/boot).
    Diff,
}

/// `PUT /snapshot/create` (definition `SnapshotCreateParams`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotCreateParams {
    /// Device and vCPU state file.
    pub snapshot_path: String,
    /// Guest memory file.
    pub mem_file_path: String,
    /// Full or Diff.
    pub snapshot_type: SnapshotKind,
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum MemoryBackendType {
    /// Guest memory is the (privately mapped) file.
    File,
}

/// Definition `MemoryBackend`.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryBackend {
    /// How memory is provided.
    pub backend_type: MemoryBackendType,
    /// The memory file.
    pub backend_path: String,
}

/// Definition `NetworkOverride`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkOverride {
    /// Interface id as saved in the snapshot.
    pub iface_id: String,
    /// The tap device to use instead.
    pub host_dev_name: String,
}

/// Definition `VsockOverride` (Firecracker >= 1.16).
#[derive(Debug, Clone, Serialize)]
pub struct VsockOverride {
    /// The vsock host socket to use instead.
    pub uds_path: String,
}

/// `PUT /snapshot/load` (definition `SnapshotLoadParams`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotLoadParams {
    /// Device and vCPU state file.
    pub snapshot_path: String,
    /// Where guest memory comes from.
    pub mem_backend: MemoryBackend,
    /// Dirty page tracking (not saved in snapshots: passed again).
    pub track_dirty_pages: bool,
    /// Resume right after loading.
    pub resume_vm: bool,
    /// Tap devices to use instead of the saved ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// Vsock socket to use instead of the saved one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    /// Our record of Firecracker's API definition.
    pub(crate) fn fixture() -> Value {
        serde_json::from_str(include_str!("api_fields.json")).expect("api_fields.json is valid JSON")
    }

    /// Finds the endpoint template that `path` instantiates.
    fn endpoint<'a>(fx: &'a Value, method: &str, path: &str) -> Option<&'a Value> {
        fx["endpoints"].as_array()?.iter().find(|e| {
            let t = e["path"].as_str().unwrap_or("");
            let (ts, ps): (Vec<_>, Vec<_>) = (t.split('/').collect(), path.split('/').collect());
            e["method"] == method
                && ts.len() == ps.len()
                && ts.iter().zip(&ps).all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}') && !p.is_empty()))
        })
    }

    /// Checks `value` against definition `def`; returns every problem.
    pub(crate) fn check_definition(fx: &Value, def: &str, value: &Value, at: &str, problems: &mut Vec<String>) {
        let Some(d) = fx["definitions"].get(def) else {
            problems.push(format!("{at}: definition {def} is not in the fixture"));
            return;
        };
        let Some(obj) = value.as_object() else {
            problems.push(format!("{at}: {def} must be an object, got {value}"));
            return;
        };
        for req in d["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                problems.push(format!("{at}: required field {def}.{req} is missing"));
            }
        }
        for (k, v) in obj {
            match d["properties"].get(k) {
                None => problems.push(format!("{at}: field {def}.{k} is not in Firecracker's API (it rejects unknown fields)")),
                Some(ty) => check_type(fx, ty, v, &format!("{at}.{k}"), problems),
            }
        }
    }

    fn check_type(fx: &Value, ty: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
        let ok = match ty {
            Value::String(t) if t == "string" => v.is_string(),
            Value::String(t) if t == "boolean" => v.is_boolean(),
            Value::String(t) if t == "integer" => v.is_u64() || v.is_i64(),
            Value::Object(o) if o.contains_key("enum") => o["enum"].as_array().unwrap().contains(v),
            Value::Object(o) if o.contains_key("ref") => {
                check_definition(fx, o["ref"].as_str().unwrap(), v, at, problems);
                true
            }
            Value::Object(o) if o.contains_key("array") => match v.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        check_type(fx, &o["array"], item, &format!("{at}[{i}]"), problems);
                    }
                    true
                }
                None => false,
            },
            other => {
                problems.push(format!("{at}: fixture type {other} is not understood"));
                true
            }
        };
        if !ok {
            problems.push(format!("{at}: value {v} does not match {ty}"));
        }
    }

    /// Checks one request (method, path, body) against the fixture.
    pub(crate) fn check_request(method: &str, path: &str, body: Option<&Value>) -> Vec<String> {
        let fx = fixture();
        let mut problems = Vec::new();
        let Some(ep) = endpoint(&fx, method, path) else {
            return vec![format!("{method} {path} is not an endpoint of Firecracker's API")];
        };
        match (ep.get("body").and_then(Value::as_str), body) {
            (Some(def), Some(b)) => check_definition(&fx, def, b, &format!("{method} {path}"), &mut problems),
            (None, None) => {}
            (Some(def), None) => problems.push(format!("{method} {path} needs a {def} body")),
            (None, Some(_)) => problems.push(format!("{method} {path} takes no body")),
        }
        // The id in the path must equal the id in the body.
        if let (Some(t), Some(b)) = (ep["path"].as_str(), body) {
            for (ts, ps) in t.split('/').zip(path.split('/')) {
                if let Some(field) = ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if b.get(field).and_then(Value::as_str) != Some(ps) {
                        problems.push(format!("{method} {path}: body field {field} must equal the path's {ps:?}"));
                    }
                }
            }
        }
        problems
    }

    #[test]
    fn the_checker_catches_unknown_missing_and_mistyped_fields() {
        let bad = serde_json::json!({ "snapshot_path": "s", "mem_backend": { "backend_type": "Uffd2", "backend_path": "m" }, "resume": true });
        let problems = check_request("PUT", "/snapshot/load", Some(&bad));
        assert!(problems.iter().any(|p| p.contains("SnapshotLoadParams.resume ")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("backend_type")), "{problems:?}");
        let missing = serde_json::json!({ "vcpu_count": 1 });
        let problems = check_request("PUT", "/machine-config", Some(&missing));
        assert!(problems.iter().any(|p| p.contains("mem_size_mib is missing")), "{problems:?}");
        let typed = serde_json::json!({ "vcpu_count": "1", "mem_size_mib": 128 });
        assert!(!check_request("PUT", "/machine-config", Some(&typed)).is_empty());
        assert!(!check_request("POST", "/vm", None).is_empty());
        let drive = serde_json::json!({ "drive_id": "other", "is_root_device": true });
        assert!(check_request("PUT", "/drives/rootfs", Some(&drive)).iter().any(|p| p.contains("must equal")));
    }

    /// Parses the `definitions:` section of a swagger 2.0 YAML file as
    /// Firecracker writes it (two-space indents, one property per block).
    fn parse_swagger_definitions(yaml: &str) -> BTreeMap<String, (Vec<String>, BTreeMap<String, Value>)> {
        let mut defs: BTreeMap<String, (Vec<String>, BTreeMap<String, Value>)> = BTreeMap::new();
        let mut in_defs = false;
        let mut current: Option<String> = None;
        let mut section = "";
        let mut prop: Option<String> = None;
        let mut in_enum = false;
        let mut in_items = false;
        for raw in yaml.lines() {
            let line = raw.trim_end();
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if indent == 0 {
                in_defs = trimmed == "definitions:";
                continue;
            }
            if !in_defs {
                continue;
            }
            match indent {
                2 => {
                    let name = trimmed.trim_end_matches(':').to_string();
                    defs.entry(name.clone()).or_default();
                    current = Some(name);
                    section = "";
                    prop = None;
                }
                4 => {
                    section = if trimmed == "required:" {
                        "required"
                    } else if trimmed == "properties:" {
                        "properties"
                    } else {
                        ""
                    };
                    prop = None;
                }
                6 if section == "required" => {
                    if let (Some(c), Some(v)) = (&current, trimmed.strip_prefix("- ")) {
                        defs.get_mut(c).unwrap().0.push(v.trim().to_string());
                    }
                }
                6 if section == "properties" => {
                    let name = trimmed.trim_end_matches(':').to_string();
                    if let Some(c) = &current {
                        defs.get_mut(c).unwrap().1.insert(name.clone(), Value::Null);
                    }
                    prop = Some(name);
                    in_enum = false;
                    in_items = false;
                }
                8 if section == "properties" => {
                    let (Some(c), Some(p)) = (&current, &prop) else { continue };
                    let slot = defs.get_mut(c).unwrap().1.get_mut(p).unwrap();
                    in_enum = false;
                    in_items = trimmed == "items:";
                    if let Some(t) = trimmed.strip_prefix("type: ") {
                        if slot.is_null() && t != "array" && t != "object" {
                            *slot = Value::String(t.to_string());
                        }
                    } else if let Some(r) = trimmed.strip_prefix("$ref: ") {
                        let name = r.trim_matches('"').rsplit('/').next().unwrap().to_string();
                        *slot = serde_json::json!({ "ref": name });
                    } else if let Some(list) = trimmed.strip_prefix("enum: [") {
                        let values: Vec<Value> =
                            list.trim_end_matches(']').split(',').map(|s| Value::String(s.trim().trim_matches('"').to_string())).collect();
                        *slot = serde_json::json!({ "enum": values });
                    } else if trimmed == "enum:" {
                        *slot = serde_json::json!({ "enum": [] });
                        in_enum = true;
                    }
                }
                10 if section == "properties" => {
                    let (Some(c), Some(p)) = (&current, &prop) else { continue };
                    let slot = defs.get_mut(c).unwrap().1.get_mut(p).unwrap();
                    if in_enum {
                        if let Some(v) = trimmed.strip_prefix("- ") {
                            slot["enum"].as_array_mut().unwrap().push(Value::String(v.trim().trim_matches('"').to_string()));
                        }
                    } else if in_items {
                        if let Some(r) = trimmed.strip_prefix("$ref: ") {
                            let name = r.trim_matches('"').rsplit('/').next().unwrap().to_string();
                            *slot = serde_json::json!({ "array": { "ref": name } });
                        }
                    }
                }
                _ => {}
            }
        }
        defs
    }

    /// Our fixture agrees with Firecracker's own file, when one is given.
    #[test]
    fn fixture_matches_the_published_definition() {
        let Ok(path) = std::env::var("SMOLVM_FIRECRACKER_SWAGGER") else {
            eprintln!("SKIPPED: set SMOLVM_FIRECRACKER_SWAGGER to a firecracker.yaml to check api_fields.json against it");
            return;
        };
        let yaml = std::fs::read_to_string(&path).unwrap();
        let published = parse_swagger_definitions(&yaml);
        let fx = fixture();
        for (name, def) in fx["definitions"].as_object().unwrap() {
            let (required, props) = published.get(name).unwrap_or_else(|| panic!("{name} is not defined in {path}"));
            let mut ours_req: Vec<String> = def["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            let mut theirs_req = required.clone();
            ours_req.sort();
            theirs_req.sort();
            assert_eq!(ours_req, theirs_req, "required fields of {name}");
            let ours: BTreeMap<String, Value> = def["properties"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(ours.keys().collect::<Vec<_>>(), props.keys().collect::<Vec<_>>(), "fields of {name}");
            for (k, v) in &ours {
                let theirs = &props[k];
                if v.get("ref").is_some() && theirs.get("ref").is_some() || v.is_string() && theirs.is_string() {
                    assert_eq!(v, theirs, "type of {name}.{k}");
                } else if v.get("enum").is_some() {
                    assert_eq!(v, theirs, "enum of {name}.{k}");
                } else if v.get("array").is_some() {
                    assert_eq!(v, theirs, "items of {name}.{k}");
                }
            }
        }
        for ep in fx["endpoints"].as_array().unwrap() {
            let path_line = format!("\n  {}:\n", ep["path"].as_str().unwrap());
            let at = yaml.find(&path_line).unwrap_or_else(|| panic!("path {} is not in {path}", ep["path"]));
            let rest = &yaml[at + path_line.len()..];
            let block_end = rest.find("\n  /").unwrap_or(rest.len()).min(rest.find("\ndefinitions:").unwrap_or(rest.len()));
            let method = format!("\n    {}:", ep["method"].as_str().unwrap().to_lowercase());
            assert!(format!("\n{}", &rest[..block_end]).contains(&method), "{} {} is not in {path}", ep["method"], ep["path"]);
        }
        assert!(yaml.contains(&format!("version: {}", fx["firecracker_api_version"].as_str().unwrap())), "fixture is for another version");
    }
}
