//! What to run for a script operation: the script, its interpreter, arguments, environment and
//! working directory, from the task as Cloudify's script plugin reads it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use drover_model::{Map, OperationTask};
use serde_json::Value;

/// The implementation that means "the script path is in the `script_path` input".
pub const SCRIPT_RUNNER_RUN: &str = "script_runner.tasks.run";

/// Inputs that configure the script plugin rather than being passed to the script.
const PLUGIN_INPUTS: [&str; 2] = ["script_path", "process"];

/// Whether an implementation names a script file rather than a plugin function.
pub fn looks_like_script(implementation: &str) -> bool {
    implementation.contains('/')
        || [".sh", ".py", ".bash"]
            .iter()
            .any(|ext| implementation.ends_with(ext))
}

/// A resolved script invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Variables added to the agent's environment (operation inputs, then `process.env`).
    pub env: Vec<(String, String)>,
    /// `process.cwd`, if given (relative to the agent's work dir).
    pub cwd: Option<PathBuf>,
}

/// Builds the invocation; an error is a message for a non-recoverable failure.
pub fn resolve(task: &OperationTask) -> Result<ScriptSpec, String> {
    let script_path = match task.inputs.get("script_path") {
        Some(Value::String(path)) => path.clone(),
        Some(other) => return Err(format!("script_path must be a string, got {other}")),
        None if task.implementation == SCRIPT_RUNNER_RUN => {
            return Err(format!(
                "{SCRIPT_RUNNER_RUN} needs the script path in the script_path input"
            ));
        }
        None => task.implementation.clone(),
    };
    if script_path.contains("://") {
        return Err(format!(
            "script {script_path:?}: only paths in the blueprint directory are supported, not URLs"
        ));
    }
    let script = match &task.blueprint_dir {
        Some(dir) => Path::new(dir).join(&script_path),
        None => PathBuf::from(&script_path),
    };
    let head = read_head(&script)?;
    let process = match task.inputs.get("process") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(process)) => process.clone(),
        Some(other) => return Err(format!("process must be an object, got {other}")),
    };

    let mut command: Vec<OsString> = match process.get("command_prefix") {
        Some(Value::String(prefix)) => prefix.split_whitespace().map(OsString::from).collect(),
        None | Some(Value::Null) => interpreter(&script, &head),
        Some(other) => {
            return Err(format!(
                "process.command_prefix must be a string, got {other}"
            ));
        }
    };
    if command.is_empty() {
        command = interpreter(&script, &head);
    }
    command.push(script.into_os_string());
    match process.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::Array(args)) => command.extend(args.iter().map(|a| env_value(a).into())),
        Some(other) => return Err(format!("process.args must be a list, got {other}")),
    }

    let mut env: Vec<(String, String)> = task
        .inputs
        .iter()
        .filter(|(name, _)| !PLUGIN_INPUTS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), env_value(value)))
        .collect();
    match process.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            env.extend(vars.iter().map(|(k, v)| (k.clone(), env_value(v))))
        }
        Some(other) => return Err(format!("process.env must be an object, got {other}")),
    }
    if let Some((name, _)) = env.iter().find(|(name, _)| !valid_env_name(name)) {
        return Err(format!(
            "input {name:?} cannot be an environment variable name"
        ));
    }
    if let Some((name, _)) = env.iter().find(|(_, value)| value.contains('\0')) {
        return Err(format!("input {name:?} contains a NUL character"));
    }

    let cwd = match process.get("cwd") {
        None | Some(Value::Null) => None,
        Some(Value::String(dir)) => Some(PathBuf::from(dir)),
        Some(other) => return Err(format!("process.cwd must be a string, got {other}")),
    };
    let program = PathBuf::from(command.remove(0));
    Ok(ScriptSpec {
        program,
        args: command,
        env,
        cwd,
    })
}

/// An environment variable's value: strings as they are, anything else as JSON.
fn env_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// The first line of the script, to read its shebang.
fn read_head(script: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let mut file = std::fs::File::open(script)
        .map_err(|e| format!("cannot open script {}: {e}", script.display()))?;
    let n = file
        .read(&mut head)
        .map_err(|e| format!("cannot read script {}: {e}", script.display()))?;
    let head = String::from_utf8_lossy(&head[..n]);
    Ok(head.lines().next().unwrap_or_default().to_string())
}

/// The interpreter by shebang (as the kernel reads it: the program and at most one argument),
/// else `python3` for `.py`, else bash (or sh where bash is missing).
fn interpreter(script: &Path, first_line: &str) -> Vec<OsString> {
    if let Some(shebang) = first_line.strip_prefix("#!") {
        let shebang = shebang.trim();
        if let Some((program, arg)) = shebang.split_once(char::is_whitespace) {
            return vec![program.into(), arg.trim().into()];
        }
        if !shebang.is_empty() {
            return vec![shebang.into()];
        }
    }
    if script.extension().is_some_and(|ext| ext == "py") {
        return vec!["python3".into()];
    }
    if Path::new("/bin/bash").exists() {
        vec!["/bin/bash".into()]
    } else {
        vec!["/bin/sh".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task_with(dir: &Path, implementation: &str, inputs: Value) -> OperationTask {
        OperationTask {
            implementation: implementation.into(),
            inputs: inputs.as_object().cloned().unwrap(),
            blueprint_dir: Some(dir.display().to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn both_ways_of_naming_the_script() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("scripts/a.py"), "print(1)\n").unwrap();
        std::fs::write(dir.path().join("scripts/b"), "#!/usr/bin/env python3\n").unwrap();

        let by_input = resolve(&task_with(
            dir.path(),
            SCRIPT_RUNNER_RUN,
            json!({"script_path": "scripts/a.py"}),
        ))
        .unwrap();
        assert_eq!(by_input.program, PathBuf::from("python3"));
        assert_eq!(
            by_input.args,
            vec![OsString::from(dir.path().join("scripts/a.py"))]
        );
        assert!(by_input.env.is_empty(), "script_path is not exported");

        let by_implementation = resolve(&task_with(dir.path(), "scripts/b", json!({}))).unwrap();
        assert_eq!(by_implementation.program, PathBuf::from("/usr/bin/env"));
        assert_eq!(by_implementation.args[0], OsString::from("python3"));
    }

    #[test]
    fn inputs_and_process_options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.sh"), "echo\n").unwrap();
        let spec = resolve(&task_with(
            dir.path(),
            "s.sh",
            json!({"port": 80, "name": "x", "tags": ["a"], "process": {
                "env": {"name": "y", "EXTRA": true}, "args": ["--v", 2],
                "command_prefix": "/bin/sh -e", "cwd": "/tmp"}}),
        ))
        .unwrap();
        assert_eq!(spec.program, PathBuf::from("/bin/sh"));
        let args: Vec<_> = spec
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "-e");
        assert_eq!(&args[2..], ["--v", "2"]);
        let env: Vec<_> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            env,
            ["port=80", "name=x", "tags=[\"a\"]", "name=y", "EXTRA=true"]
        );
        assert_eq!(spec.cwd, Some(PathBuf::from("/tmp")));
    }

    #[test]
    fn bad_tasks_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.sh"), "").unwrap();
        for (implementation, inputs) in [
            (SCRIPT_RUNNER_RUN, json!({})),
            ("missing.sh", json!({})),
            ("http://x/s.sh", json!({})),
            ("s.sh", json!({"a=b": 1})),
            ("s.sh", json!({"process": "no"})),
            ("s.sh", json!({"script_path": 3})),
        ] {
            assert!(
                resolve(&task_with(dir.path(), implementation, inputs)).is_err(),
                "{implementation}"
            );
        }
    }
}
