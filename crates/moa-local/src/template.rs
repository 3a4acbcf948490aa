//! The chat template a GGUF carries (`tokenizer.chat_template`, Jinja), rendered with minijinja.
//! A model without one gets ChatML. A template comes from a model file, so it is bounded like
//! any hostile input: fuel (instructions per render), a recursion limit, and a cap on the
//! prompt it writes.

use minijinja::{context, Environment, Error, ErrorKind};
use moa_core::Message;

/// ChatML, for models whose GGUF has no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Instructions one render may execute: a real chat template needs a few hundred per message.
pub const FUEL: u64 = 2_000_000;
/// Nesting of macros, includes and recursive loops.
pub const RECURSION_LIMIT: usize = 64;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python string methods HF templates use (`.strip()`, `.startswith()`, ...).
fn python_methods(
    _state: &mut minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, Error> {
    let Some(s) = value.as_str() else {
        return Err(Error::from(ErrorKind::UnknownMethod));
    };
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str()).unwrap_or_default();
    Ok(match method {
        "strip" => s.trim().into(),
        "lstrip" => s.trim_start().into(),
        "rstrip" => s.trim_end().into(),
        "upper" => s.to_uppercase().into(),
        "lower" => s.to_lowercase().into(),
        "startswith" => s.starts_with(arg(0)).into(),
        "endswith" => s.ends_with(arg(0)).into(),
        "split" => s
            .split(arg(0))
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into(),
        "replace" => s.replace(arg(0), arg(1)).into(),
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}

impl ChatTemplate {
    /// Compiles `source` (or ChatML if `None`).
    pub fn new(source: Option<&str>, bos: &str, eos: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.add_function("raise_exception", raise_exception);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, Error> {
        self.render_bounded(messages, usize::MAX)
    }

    /// Like [`ChatTemplate::render`], but a prompt over `max_bytes` is an error as soon as it
    /// outgrows the limit.
    pub fn render_bounded(&self, messages: &[Message], max_bytes: usize) -> Result<String, Error> {
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| {
                // Chat templates know `system`, not OpenAI's newer `developer`.
                let role = match &m.role {
                    moa_core::Role::Developer => "system",
                    role => role.as_str(),
                };
                context! { role => role, content => m.content.clone() }
            })
            .collect();
        let mut out = Capped {
            bytes: Vec::new(),
            max: max_bytes,
        };
        self.env.get_template("chat")?.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos.clone(),
                eos_token => self.eos.clone(),
            },
            &mut out,
        )?;
        String::from_utf8(out.bytes)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "the prompt is not UTF-8"))
    }
}

/// A buffer that refuses to grow past `max` bytes.
struct Capped {
    bytes: Vec<u8>,
    max: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.max {
            return Err(std::io::Error::other(format!(
                "the prompt is longer than {} bytes",
                self.max
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template SmolLM2-135M-Instruct's GGUF carries.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_adds_its_default_system_prompt() {
        let t = ChatTemplate::new(Some(SMOLLM2), "<|im_start|>", "<|im_end|>").unwrap();
        assert_eq!(
            t.render(&[Message::user("Hi")]).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&[Message::system("S"), Message::user("Hi")]).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn chatml_is_the_fallback_and_python_methods_work() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        assert_eq!(
            t.render(&[Message::user("x")]).unwrap(),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = ChatTemplate::new(
            Some("{% for m in messages %}{{ m['content'].strip().upper() }}{% endfor %}{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('bad') }}{% endif %}"),
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[Message::user("  hi ")]).unwrap(), "HI");
        assert!(t.render(&[Message::assistant("x")]).is_err());
    }

    #[test]
    fn hostile_templates_run_out_of_fuel_recursion_or_room() {
        let endless = "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(Some(endless), "", "").unwrap();
        let err = t.render(&[Message::user("x")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfFuel, "{err}");

        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let t = ChatTemplate::new(Some(deep), "", "").unwrap();
        assert!(t.render(&[Message::user("x")]).is_err());

        let t = ChatTemplate::new(None, "", "").unwrap();
        let long = "a".repeat(10_000);
        assert!(t.render_bounded(&[Message::user(&long)], 5_000).is_err());
        assert!(t.render_bounded(&[Message::user(&long)], 20_000).is_ok());
    }
}
