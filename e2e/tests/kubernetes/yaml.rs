//! Just enough YAML to read the repository's manifests as data (JSON
//! values), so that the runc test derives a container's configuration from
//! `deploy/kubernetes/` rather than from a copy: block mappings and
//! sequences, plain and quoted scalars, `|` literal blocks, `{}` and `[]`,
//! and comments. Anything else (anchors, flow collections with items,
//! folded blocks, several documents) panics, naming the line: a manifest
//! that grows past this reader fails the test rather than being misread.
//! No YAML crate is in the workspace's tree, and this one is the tests'
//! only reader.

use serde_json::{Map, Value};

/// The one document in `text`.
pub fn parse(text: &str) -> Value {
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        assert!(
            !(t.starts_with("---") || t.starts_with("...")) || n == 0,
            "line {}: one document only",
            n + 1
        );
        assert!(!line.contains('\t'), "line {}: a tab", n + 1);
    }
    let mut r = Reader { lines, at: 0 };
    r.skip();
    let Some((indent, _)) = r.peek() else {
        return Value::Null;
    };
    let v = r.node(indent);
    r.skip();
    assert!(
        r.peek().is_none(),
        "line {}: not part of the document",
        r.at + 1
    );
    v
}

struct Reader {
    lines: Vec<String>,
    at: usize,
}

impl Reader {
    /// Moves past blank lines, comment lines and a leading `---`.
    fn skip(&mut self) {
        while let Some(line) = self.lines.get(self.at) {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t == "---" {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    /// The current line's indentation and content, without a trailing
    /// comment.
    fn peek(&self) -> Option<(usize, String)> {
        let line = self.lines.get(self.at)?;
        let content = line.trim_start();
        Some((line.len() - content.len(), uncomment(content).to_owned()))
    }

    /// The node whose first line is the current one, at `indent`.
    fn node(&mut self, indent: usize) -> Value {
        match self.peek() {
            Some((_, c)) if is_item(&c) => self.sequence(indent),
            Some(_) => self.mapping(indent),
            None => Value::Null,
        }
    }

    fn sequence(&mut self, indent: usize) -> Value {
        let mut items = Vec::new();
        loop {
            self.skip();
            match self.peek() {
                Some((i, c)) if i == indent && is_item(&c) => {
                    let rest = c[1..].trim_start();
                    if rest.is_empty() {
                        self.at += 1;
                        items.push(self.nested(indent));
                    } else if key_of(rest).is_some() {
                        // `- key: value`: a mapping whose keys line up
                        // with `key`; read it as if `- ` were spaces.
                        let inner = indent + (c.len() - rest.len());
                        self.lines[self.at] = format!("{}{rest}", " ".repeat(inner));
                        items.push(self.mapping(inner));
                    } else {
                        items.push(self.scalar(rest));
                        self.at += 1;
                    }
                }
                Some((i, _)) if i > indent => panic!("line {}: indented oddly", self.at + 1),
                _ => return Value::Array(items),
            }
        }
    }

    fn mapping(&mut self, indent: usize) -> Value {
        let mut map = Map::new();
        loop {
            self.skip();
            let Some((i, c)) = self.peek() else { break };
            if i < indent || (i == indent && is_item(&c)) {
                break;
            }
            assert!(i == indent, "line {}: indented oddly", self.at + 1);
            let (key, rest) =
                key_of(&c).unwrap_or_else(|| panic!("line {}: not `key: value`", self.at + 1));
            let key = unquote(key);
            let value = match rest {
                "" => {
                    self.at += 1;
                    self.nested(indent)
                }
                "|" | "|-" => {
                    self.at += 1;
                    self.literal(indent, rest == "|-")
                }
                _ => {
                    let v = self.scalar(rest);
                    self.at += 1;
                    v
                }
            };
            assert!(
                map.insert(key.clone(), value).is_none(),
                "line {}: `{key}` twice",
                self.at
            );
        }
        Value::Object(map)
    }

    /// The value of a key or item with nothing after it: the block below
    /// (a sequence may sit at the key's own indentation), or null.
    fn nested(&mut self, indent: usize) -> Value {
        self.skip();
        match self.peek() {
            Some((i, _)) if i > indent => self.node(i),
            Some((i, c)) if i == indent && is_item(&c) => self.sequence(i),
            _ => Value::Null,
        }
    }

    /// A `|` block: the lines indented past `indent`, with the first
    /// one's indentation taken off, each ending in a newline (`|-`: the
    /// last without).
    fn literal(&mut self, indent: usize, strip: bool) -> Value {
        let mut block: Vec<String> = Vec::new();
        let mut by = None;
        while let Some(line) = self.lines.get(self.at) {
            let content = line.trim_start();
            let i = line.len() - content.len();
            if content.is_empty() {
                block.push(String::new());
            } else if i > indent {
                let by = *by.get_or_insert(i);
                assert!(i >= by, "line {}: a block less indented", self.at + 1);
                block.push(line[by..].to_owned());
            } else {
                break;
            }
            self.at += 1;
        }
        while block.last().is_some_and(String::is_empty) {
            block.pop();
        }
        let mut text = block.join("\n");
        if !strip && !text.is_empty() {
            text.push('\n');
        }
        Value::String(text)
    }

    fn scalar(&self, text: &str) -> Value {
        let line = self.at + 1;
        match text {
            "{}" => return Value::Object(Map::new()),
            "[]" => return Value::Array(Vec::new()),
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            "null" | "~" => return Value::Null,
            _ => {}
        }
        assert!(
            !text.starts_with(['{', '[', '&', '*', '!', '>', '|']),
            "line {line}: `{text}` is YAML this reader does not take"
        );
        if let Ok(n) = text.parse::<i64>() {
            return Value::from(n);
        }
        Value::String(unquote(text))
    }
}

fn is_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

/// `key: rest` (rest trimmed, maybe empty), unless the line is no key.
fn key_of(content: &str) -> Option<(&str, &str)> {
    if content.starts_with(['"', '\'']) {
        let q = content.chars().next()?;
        let end = content[1..].find(q)? + 2;
        let rest = content[end..].strip_prefix(':')?;
        return (rest.is_empty() || rest.starts_with(' ')).then(|| (&content[..end], rest.trim()));
    }
    if let Some(key) = content.strip_suffix(':') {
        return (!key.contains(' ')).then_some((key, ""));
    }
    content
        .split_once(": ")
        .map(|(k, rest)| (k, rest.trim()))
        .filter(|(k, _)| !k.contains(' '))
}

/// The content without a ` #` comment (outside quotes).
fn uncomment(content: &str) -> &str {
    let mut quote = None;
    let bytes = content.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') if i == 0 || bytes[i - 1] == b' ' => quote = Some(b),
            (Some(q), b) if b == q => quote = None,
            (None, b'#') if i > 0 && bytes[i - 1] == b' ' => return content[..i].trim_end(),
            _ => {}
        }
    }
    content.trim_end()
}

fn unquote(text: &str) -> String {
    for q in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(q).and_then(|t| t.strip_suffix(q)) {
            assert!(
                !(q == '"' && inner.contains('\\')),
                "`{text}`: escapes are YAML this reader does not take"
            );
            return inner.replace("''", "'");
        }
    }
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn mappings_sequences_and_scalars() {
        let text = "\
# a comment
apiVersion: v1
kind: Pod   # trailing
spec:
  hostPID: true
  n: 30
  containers:
    - name: a
      args:
        - run
        - --x=1
      securityContext:
        capabilities:
          drop:
          - ALL
    - name: 'b c'
  empty: {}
  none: []
  nothing:
";
        assert_eq!(
            parse(text),
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "spec": {
                    "hostPID": true,
                    "n": 30,
                    "containers": [
                        {"name": "a", "args": ["run", "--x=1"],
                         "securityContext": {"capabilities": {"drop": ["ALL"]}}},
                        {"name": "b c"},
                    ],
                    "empty": {},
                    "none": [],
                    "nothing": null,
                }
            })
        );
    }

    #[test]
    fn literal_blocks_keep_their_lines_and_comments() {
        let text =
            "data:\n  policy.toml: |\n    # kept\n    [allow]\n\n    uids = [0]\n\nnext: 1\n";
        assert_eq!(
            parse(text),
            json!({"data": {"policy.toml": "# kept\n[allow]\n\nuids = [0]\n"}, "next": 1})
        );
    }

    #[test]
    #[should_panic(expected = "this reader does not take")]
    fn flow_collections_with_items_are_refused() {
        parse("a: [1, 2]\n");
    }

    #[test]
    #[should_panic(expected = "twice")]
    fn a_key_twice_is_refused() {
        parse("a: 1\na: 2\n");
    }

    #[test]
    fn the_repositorys_manifests_read() {
        let ds = parse(include_str!("../../../deploy/kubernetes/daemonset.yaml"));
        assert_eq!(ds["kind"], "DaemonSet");
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["volumeMounts"][1]["mountPropagation"], "HostToContainer");
        let policy = parse(include_str!("../../../deploy/kubernetes/policy.yaml"));
        let toml = policy["data"]["policy.toml"].as_str().expect("a policy");
        assert!(toml.contains("[allow.host]\nuids = [0]\n"), "{toml}");
    }
}
