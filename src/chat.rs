//! Chat prompts: a conversation rendered with the model's own template
//! (`tokenizer.chat_template`, a Jinja template) as Hugging Face's
//! `apply_chat_template` renders it, then tokenized with control tokens
//! parsed.
//!
//! Hugging Face renders with jinja2 in a sandbox with `trim_blocks` and
//! `lstrip_blocks` on, jinja2's default (lenient) undefined values, the
//! loop-control extension (`{% break %}`), a `raise_exception(msg)`
//! function and its own `tojson` (Python's `json.dumps`: `", "` and `": "`
//! separators, keys in their order, non-ASCII kept). The context holds
//! `messages`, `add_generation_prompt`, `tools` and `documents` (both
//! `none`), and the special tokens: here `bos_token` and `eos_token`, the
//! texts of the vocabulary's BOS and EOS tokens (left undefined when the
//! vocabulary has none). Templates call Python string methods
//! (`.strip()`, `.startswith()`, `.split()`): MiniJinja's Python
//! compatibility layer provides them.
//!
//! The template is compiled once ([`ChatTemplate::from_gguf`]); each
//! conversation is one [`ChatTemplate::render`].

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{syntax::SyntaxConfig, Environment};
use serde::{Deserialize, Serialize};
use std::io;

/// The GGUF key that holds the chat template.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// The template's name inside its environment (it shows in error messages).
const NAME: &str = "chat_template";

/// The most work one render may do, in MiniJinja's fuel: one unit per
/// instruction or per 64 bytes of data made (see `Environment::set_fuel`).
/// A template comes from the model file: one that loops without end or
/// builds huge strings stops here (in a fraction of a second, having made
/// at most 256 MiB of data, so no single allocation reaches 128 MiB)
/// instead of hanging the run. Qwen's template uses about 310k on one
/// 4 MiB message (the longest request line) and 580k on 10,000 messages.
pub const RENDER_FUEL: u64 = 4_000_000;

/// Marks the detail of an error that the template raised itself
/// (`raise_exception`), so that its message can be shown as it is.
const RAISED: &str = "\u{0}raised\u{0}";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user`, `assistant` (or whatever else the template knows).
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A user turn.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }
}

/// A compiled chat template and the special-token texts it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for error messages.
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template of a GGUF file (`tokenizer.chat_template`), compiled,
    /// with `tokenizer`'s BOS and EOS texts (the file's own tokenizer).
    /// `None` when the file has no template; an error names the file when
    /// the key is not a string or the template does not compile.
    pub fn from_gguf(file: &GgufFile, tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
        let Some(value) = file.get(KEY_CHAT_TEMPLATE) else {
            return Ok(None);
        };
        let source = match value.as_str() {
            Some(s) => s,
            // The reader's own message: names the file, the key and the type.
            None => file.require_str(KEY_CHAT_TEMPLATE)?,
        };
        let text = |id: Option<u32>| id.and_then(|t| tokenizer.token_text(t)).map(str::to_owned);
        let origin = format!("{} ({KEY_CHAT_TEMPLATE})", file.path.display());
        ChatTemplate::new(
            source,
            text(tokenizer.bos()).as_deref(),
            text(tokenizer.eos()).as_deref(),
            &origin,
        )
        .map(Some)
    }

    /// Like [`from_gguf`](Self::from_gguf), but a file without a template
    /// is an error (for `--chat` and `messages` requests): see
    /// [`missing_template`].
    pub fn require(file: &GgufFile, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        ChatTemplate::from_gguf(file, tokenizer)?
            .ok_or_else(|| missing_template(&file.path.display().to_string()))
    }

    /// Compile `source`. `origin` names it in errors (a file and key).
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        origin: &str,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::model(format!("{origin}: {e}")))?;
        env.set_syntax(syntax);
        // Lenient, as jinja2's default `Undefined`: an undefined value
        // prints as nothing, is false and iterates as empty; only looking
        // into it is an error.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(RENDER_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| {
                Error::model(format!(
                    "{origin}: the chat template does not compile: {}",
                    describe(&e)
                ))
            })?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_owned(),
            bos_token: bos_token.map(str::to_owned),
            eos_token: eos_token.map(str::to_owned),
        })
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, it ends
    /// with the opening of the assistant's turn. A conversation the
    /// template refuses (`raise_exception`, say roles that do not
    /// alternate) is a usage error carrying the template's message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::usage("the conversation has no messages"));
        }
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::model(format!("{}: {}", self.origin, describe(&e))))?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(Serde(messages))),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        // A token the vocabulary lacks stays undefined (Hugging Face leaves
        // it out), rather than `none`.
        for (name, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            if let Some(text) = token {
                ctx.push((name, Value::from(text.as_str())));
            }
        }
        let ctx = Value::from_pairs(ctx);
        template.render(ctx).map_err(|e| match raised(&e) {
            Some(msg) => Error::usage(format!(
                "{}: the chat template refused the conversation: {msg}",
                self.origin
            )),
            None if e.kind() == minijinja::ErrorKind::OutOfFuel => Error::usage(format!(
                "{}: the chat template did more work than a render may ({RENDER_FUEL} fuel): \
                 a runaway template, or a conversation far too long",
                self.origin
            )),
            None => Error::usage(format!(
                "{}: the chat template failed: {}",
                self.origin,
                describe(&e)
            )),
        })
    }

    /// Where the template came from: `FILE (tokenizer.chat_template)`.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The error for chat input on a model without a template.
pub fn missing_template(model: &str) -> Error {
    Error::model(format!(
        "{model}: the model has no chat template (no {KEY_CHAT_TEMPLATE} key); chat input \
         (--chat, \"messages\") needs one: send plain prompts instead"
    ))
}

/// The tokens of a rendered chat prompt: control tokens written by the
/// template (`<|im_start|>`, `<|eot_id|>`, `<s>`) become those tokens, and
/// BOS goes first when the model asks for it (`add_bos_default`) unless the
/// template already wrote it.
pub fn prompt_tokens(tokenizer: &Tokenizer, rendered: &str) -> Vec<u32> {
    let mut tokens = tokenizer.encode_with_special(rendered, false);
    if let (true, Some(bos)) = (tokenizer.add_bos_default(), tokenizer.bos()) {
        if tokens.first() != Some(&bos) {
            tokens.insert(0, bos);
        }
    }
    tokens
}

/// `raise_exception(msg)`: the template refuses its input.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// The message of an error raised by `raise_exception`, if this is one.
fn raised(e: &minijinja::Error) -> Option<&str> {
    e.detail().and_then(|d| d.strip_prefix(RAISED))
}

/// A MiniJinja error in one line, with the template line it points at.
fn describe(e: &minijinja::Error) -> String {
    let mut text = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Hugging Face's `tojson`: Python's `json.dumps(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)`, keyword arguments
/// as in Python. Keys keep their order; without `indent` items are
/// separated by `", "` and keys by `": "`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let bad = |msg: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg);
    let indent: Option<String> = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            (None, Some(s)) => Some(s.to_owned()),
            _ => {
                return Err(bad(format!(
                    "tojson: indent must be an int or a string, not {v}"
                )))
            }
        },
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => return Err(bad("tojson: separators must be a pair".into())),
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let formatter = PyFormatter {
        indent,
        item_sep,
        key_sep,
        depth: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    let written = if sort_keys {
        serde_json::to_value(value)
            .map(sorted)
            .and_then(|v| v.serialize(&mut ser))
    } else {
        value.serialize(&mut ser)
    };
    written.map_err(|e| bad(format!("tojson: {e}")))?;
    let mut text = String::from_utf8(out).map_err(|e| bad(format!("tojson: {e}")))?;
    if ensure_ascii && !text.is_ascii() {
        // Outside strings JSON is ASCII, so every other character is in one.
        let mut escaped = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if c.is_ascii() {
                escaped.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    escaped.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        text = escaped;
    }
    Ok(Value::from(text))
}

/// `v` with every object's keys in sorted order.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// JSON laid out as Python's `json.dumps` lays it out.
struct PyFormatter {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    depth: usize,
    /// The innermost open container has an item (so its end goes on a new
    /// line when indenting; an empty one stays `[]`).
    has_value: bool,
}

impl PyFormatter {
    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w, self.depth)?;
        }
        w.write_all(bracket)
    }

    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(self.item_sep.as_bytes())?;
        }
        self.newline(w, self.depth)
    }

    fn newline<W: ?Sized + io::Write>(&self, w: &mut W, depth: usize) -> io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..depth {
                w.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(self.key_sep.as_bytes())
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source, Some("<s>"), Some("</s>"), "test").unwrap()
    }

    fn render(source: &str, messages: &[Message]) -> Result<String> {
        template(source).render(messages, true)
    }

    #[test]
    fn trim_and_lstrip_blocks_as_hugging_face() {
        let source = "{% for m in messages %}\n  {% if m.role == 'user' %}\nU:{{ m.content }}\n  {% endif %}\n{% endfor %}";
        let out = render(source, &[Message::user("hi"), Message::user("yo")]).unwrap();
        assert_eq!(out, "U:hi\nU:yo\n");
    }

    #[test]
    fn loop_variables_tokens_and_generation_prompt() {
        let source = "{{ bos_token }}{% for m in messages %}{{ loop.index0 }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}:{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{{ eos_token }}{% endif %}";
        let msgs = [Message::new("system", "a"), Message::user("b")];
        assert_eq!(render(source, &msgs).unwrap(), "<s>0F:a1L:b></s>");
        assert_eq!(
            template(source).render(&msgs, false).unwrap(),
            "<s>0F:a1L:b"
        );
    }

    #[test]
    fn python_string_methods_and_slices() {
        let source = "{% for m in messages[::-1] %}{{ m.content.strip() }}|{{ m.content.startswith(' x') }}|{{ m.content.split('y')[-1].lstrip() }};{% endfor %}";
        let out = render(source, &[Message::user(" xy z "), Message::user("q")]).unwrap();
        // Booleans print as Python prints them, as in jinja2.
        assert_eq!(out, "q|False|q;xy z|True|z ;");
    }

    #[test]
    fn raise_exception_is_a_clear_error() {
        let source = "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with system') }}{% endif %}ok";
        let e = render(source, &[Message::user("hi")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Usage);
        assert!(
            e.message
                .contains("refused the conversation: Conversation must start with system"),
            "{}",
            e.message
        );
        assert!(!e.message.contains('\0'), "{:?}", e.message);
        assert_eq!(
            render(source, &[Message::new("system", "s")]).unwrap(),
            "ok"
        );
    }

    #[test]
    fn undefined_is_lenient_like_jinja2() {
        let source = "[{{ nothing }}]{% if tools %}T{% endif %}{% if tools is none %}N{% endif %}{% for x in nothing %}x{% endfor %}{% if nothing is defined %}D{% endif %}";
        assert_eq!(render(source, &[Message::user("hi")]).unwrap(), "[]N");
        // Looking into an undefined value is an error, as in jinja2.
        assert!(render("{{ nothing.field }}", &[Message::user("hi")]).is_err());
    }

    #[test]
    fn missing_special_tokens_are_undefined() {
        let t = ChatTemplate::new(
            "{% if bos_token is defined %}B{% endif %}[{{ eos_token }}]",
            None,
            Some("E"),
            "test",
        )
        .unwrap();
        assert_eq!(t.render(&[Message::user("hi")], true).unwrap(), "[E]");
    }

    #[test]
    fn tojson_as_python_json_dumps() {
        let source = "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ {'é': [], 'b': {}} | tojson(ensure_ascii=true) }}|{{ {'b': 1, 'a': [1, 2.5, none, true]} | tojson(sort_keys=true) }}";
        let out = render(source, &[Message::user("<x> & 'y' é")]).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"<x> & 'y' é\"}]|{\n  \"role\": \"user\",\n  \"content\": \"<x> & 'y' é\"\n}|{\"\\u00e9\": [], \"b\": {}}|{\"a\": [1, 2.5, null, true], \"b\": 1}"
        );
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let msgs = [Message::user("hi")];
        let forever =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let e = render(forever, &msgs).unwrap_err();
        assert!(e.message.contains("fuel"), "{}", e.message);
        let doubling = "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}";
        let e = render(doubling, &msgs).unwrap_err();
        assert!(e.message.contains("fuel"), "{}", e.message);
        // A long conversation of long messages fits.
        let long = vec![Message::user("word ".repeat(800_000)); 1];
        let source = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content.strip() + '<|im_end|>' + '\\n' }}{% endfor %}";
        assert!(render(source, &long).is_ok());
        let many = vec![Message::user("hello there"); 10_000];
        assert!(render(source, &many).is_ok());
    }

    #[test]
    fn loop_controls_and_namespace() {
        let source = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}";
        let msgs = vec![Message::user("a"); 5];
        assert_eq!(render(source, &msgs).unwrap(), "2");
    }

    #[test]
    fn bad_templates_and_empty_conversations() {
        let e = ChatTemplate::new("{% for %}", None, None, "m.gguf (tokenizer.chat_template)")
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Model);
        assert!(
            e.message.starts_with(
                "m.gguf (tokenizer.chat_template): the chat template does not compile"
            ),
            "{}",
            e.message
        );
        let e = render("x", &[]).unwrap_err();
        assert!(e.message.contains("no messages"), "{}", e.message);
    }

    #[test]
    fn messages_reject_unknown_fields() {
        let m: Message = serde_json::from_str(r#"{"role": "user", "content": "hi"}"#).unwrap();
        assert_eq!(m, Message::user("hi"));
        assert!(serde_json::from_str::<Message>(r#"{"role": "user"}"#).is_err());
        let e = serde_json::from_str::<Message>(r#"{"role": "user", "content": "x", "name": "n"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }
}
