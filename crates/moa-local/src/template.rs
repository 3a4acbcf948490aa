//! The chat template a GGUF carries (`tokenizer.chat_template`, Jinja), rendered with minijinja.
//! A model without one gets ChatML.

use minijinja::{context, Environment, Error, ErrorKind};
use moa_core::Message;

/// ChatML, for models whose GGUF has no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

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
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| {
                let role = match &m.role {
                    moa_core::Role::System => "system",
                    moa_core::Role::User => "user",
                    moa_core::Role::Assistant => "assistant",
                    moa_core::Role::Other(r) => r.as_str(),
                };
                context! { role => role, content => m.content.clone() }
            })
            .collect();
        self.env.get_template("chat")?.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
        })
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
}
