//! `labctl schema`: the committed `docs/labwright.schema.json` is what labctl prints, and it
//! accepts every example protocol and refuses every malformed fixture
//! (`protocols/tests/malformed/`), as the compiler does — checked with Python's `jsonschema`
//! (Draft 2020-12), a validator nobody here wrote.

use super::*;

#[test]
fn the_schema_accepts_every_example_and_refuses_every_malformed_fixture() {
    let o = labctl(&["schema"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let printed = text(&o.stdout);
    let committed = std::fs::read_to_string(root().join("docs/labwright.schema.json")).unwrap();
    assert_eq!(printed, committed, "docs/labwright.schema.json is stale: labctl schema > docs/labwright.schema.json");

    let dir = fresh_dir("schema");
    let schema = dir.join("schema.json");
    std::fs::write(&schema, &printed).unwrap();
    // Each YAML protocol as JSON, read by the compiler's own reader.
    let mut files = Vec::new();
    for (folder, expect_valid) in [("protocols/examples", true), ("protocols/tests/malformed", false)] {
        let mut n = 0;
        for e in std::fs::read_dir(root().join(folder)).unwrap().flatten() {
            let path = e.path();
            let src = protocols::SourceFile::new(path.display().to_string(), std::fs::read_to_string(&path).unwrap());
            let root_node = protocols::syntax::yaml::parse(&src).root.expect("the fixtures are YAML");
            let json = dir.join(format!("{}-{}.json", if expect_valid { "good" } else { "bad" }, n));
            std::fs::write(&json, root_node.to_json().to_string()).unwrap();
            let compiled = labctl(&["validate", path.to_str().unwrap()]);
            assert_eq!(
                compiled.status.code(),
                Some(if expect_valid { 0 } else { 1 }),
                "{}: {}",
                path.display(),
                text(&compiled.stderr)
            );
            files.push((path, json, expect_valid));
            n += 1;
        }
        assert!(n >= 5, "{folder} has its protocols");
    }
    let Some(py) = peers_python() else { return };
    let check = r#"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema)
for path in sys.argv[2:]:
    errors = list(v.iter_errors(json.load(open(path))))
    print(path, "valid" if not errors else "invalid: " + errors[0].message[:200])
"#;
    let o = Command::new(&py).args(["-c", check]).arg(&schema).args(files.iter().map(|f| &f.1)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let verdicts = text(&o.stdout);
    for (protocol, json, expect_valid) in &files {
        let line = verdicts.lines().find(|l| l.starts_with(json.to_str().unwrap())).unwrap();
        assert_eq!(line.ends_with(" valid"), *expect_valid, "{}: {line}", protocol.display());
    }
}
