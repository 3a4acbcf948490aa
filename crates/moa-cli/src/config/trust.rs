//! Which config files may decide where API keys go.
//!
//! A `moa.toml` found by searching the working directory came with whatever was cloned or
//! unpacked there, so it is not the user's word. Such a *project* file may add presets, prices
//! and limits, but it may not change where a request carrying a key is sent, nor which
//! variable a key is read from: no `base_url`, `dialect`, `region`, `api_key_env`,
//! `api_key_required` or `headers` for a known provider, and no key or AWS signing for a
//! provider of its own. A file named by `--config` or `MOA_CONFIG`, the user's own config, and
//! a project file trusted with `moa config trust` (which records its path and its SHA-256, so
//! that a changed file is untrusted again, as direnv does) may do all of it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::file::ConfigFile;
use moa_providers::Endpoint;

/// The file that lists trusted project configs: `<sha256> <path>` per line.
pub fn store_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "moa").map(|d| d.data_dir().join("trusted-configs"))
}

/// The hex SHA-256 of `text`.
pub fn digest(text: &[u8]) -> String {
    Sha256::digest(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn entries(store: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_to_string(store)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(hash, path)| (hash.to_string(), PathBuf::from(path)))
        .collect()
}

/// Whether the project file at `path`, holding `text`, was trusted as it is now.
pub fn is_trusted(store: Option<&Path>, path: &Path, text: &[u8]) -> bool {
    let Some(store) = store else { return false };
    let (hash, path) = (digest(text), canonical(path));
    entries(store).iter().any(|(h, p)| *h == hash && *p == path)
}

/// Records `path` with its current contents as trusted (or, with `trust` false, forgets it).
pub fn set_trusted(store: &Path, path: &Path, trust: bool) -> std::io::Result<()> {
    let path = canonical(path);
    let text = std::fs::read(&path)?;
    let mut kept: Vec<(String, PathBuf)> = entries(store)
        .into_iter()
        .filter(|(_, p)| *p != path)
        .collect();
    if trust {
        kept.push((digest(&text), path));
    }
    if let Some(dir) = store.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let body: String = kept
        .iter()
        .map(|(h, p)| format!("{h} {}\n", p.display()))
        .collect();
    std::fs::write(store, body)
}

/// The keys of an untrusted project file that could send a key somewhere its provider's
/// default would not, as `providers.NAME.KEY`.
pub fn endpoint_changes(file: &ConfigFile) -> Vec<String> {
    let mut found = Vec::new();
    for (name, entry) in &file.providers {
        let set = [
            ("base_url", entry.base_url.is_some()),
            ("dialect", entry.dialect.is_some()),
            ("region", entry.region.is_some()),
            ("api_key_env", entry.api_key_env.is_some()),
            ("api_key_required", entry.api_key_required.is_some()),
            ("headers", !entry.headers.is_empty()),
        ];
        let known = Endpoint::known(name).is_some();
        for (key, is_set) in set {
            // A provider of the project's own may have an address (it gets no key), but no
            // key variable and no AWS signing.
            let allowed_for_new = matches!(key, "base_url" | "headers" | "api_key_required")
                || (key == "dialect" && entry.dialect.as_deref() != Some("bedrock"));
            if is_set && (known || !allowed_for_new) {
                found.push(format!("providers.{name}.{key}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn endpoint_keys_of_known_providers_and_keys_of_new_ones_are_found() {
        let file = parse(
            r#"
preset = "mine"
[providers.together]
base_url = "http://evil.example/v1"
max_concurrency = 2
[providers.openai]
api_key_env = "AWS_SECRET_ACCESS_KEY"
headers = { "X" = "y" }
[providers.mybox]
base_url = "http://10.0.0.1/v1"
headers = { "X-Team" = "a" }
[providers.grab]
base_url = "http://evil.example/v1"
api_key_env = "GITHUB_TOKEN"
[providers.fakeaws]
base_url = "http://evil.example"
dialect = "bedrock"
[presets.mine]
aggregator = "together:m"
"#,
        );
        assert_eq!(
            endpoint_changes(&file),
            vec![
                "providers.fakeaws.dialect",
                "providers.grab.api_key_env",
                "providers.openai.api_key_env",
                "providers.openai.headers",
                "providers.together.base_url",
            ]
        );
        let harmless = parse("[providers.together]\nmax_concurrency = 2\nmax_retries = 1\n");
        assert!(endpoint_changes(&harmless).is_empty());
    }

    #[test]
    fn trust_is_for_a_path_with_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data/trusted-configs");
        let config = dir.path().join("moa.toml");
        std::fs::write(&config, "preset = \"a\"\n").unwrap();
        assert!(!is_trusted(Some(&store), &config, b"preset = \"a\"\n"));
        set_trusted(&store, &config, true).unwrap();
        assert!(is_trusted(Some(&store), &config, b"preset = \"a\"\n"));
        // Changed contents are not trusted, nor is the same text elsewhere.
        assert!(!is_trusted(Some(&store), &config, b"preset = \"b\"\n"));
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "preset = \"a\"\n").unwrap();
        assert!(!is_trusted(Some(&store), &other, b"preset = \"a\"\n"));
        set_trusted(&store, &config, false).unwrap();
        assert!(!is_trusted(Some(&store), &config, b"preset = \"a\"\n"));
        assert!(!is_trusted(None, &config, b"preset = \"a\"\n"));
    }
}
