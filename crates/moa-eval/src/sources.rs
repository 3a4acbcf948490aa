//! Where the data sets come from, pinned to the commits the published numbers used, and their
//! download into a data folder laid out like those repositories (`alpaca_eval/…`, `mt_bench/…`,
//! `flask/…`). Files are checked against SHA-256 digests where the source is pinned.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::Bench;

/// One file of a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Source {
    pub bench: Bench,
    /// Where it goes under the data folder.
    pub path: &'static str,
    pub url: &'static str,
    /// SHA-256 of the pinned file; `None` for unpinned sources.
    pub sha256: Option<&'static str>,
    /// Needed by generation or judging, rather than optional (the LC data).
    pub required: bool,
}

/// Every file `moa eval` reads. Licences: AlpacaEval's data is CC BY-NC 4.0; FastChat's
/// repository is Apache-2.0; FLASK states no licence (research use). None is bundled with moa.
pub const SOURCES: [Source; 9] = [
    Source {
        bench: Bench::AlpacaEval,
        path: crate::alpaca::BASELINE,
        url: "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/cd543a149df89434d8a54582c0151c0b945c3d20/results/gpt4_1106_preview/model_outputs.json",
        sha256: Some("83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4"),
        required: true,
    },
    Source {
        bench: Bench::AlpacaEval,
        path: crate::alpaca::JUDGE_PROMPT,
        url: "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/cd543a149df89434d8a54582c0151c0b945c3d20/src/alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt",
        sha256: Some("784227e6dc2832fc08c43d2c8ea3a308e7523780187a1aaad2f85e30bac85f62"),
        required: true,
    },
    Source {
        bench: Bench::AlpacaEval,
        path: crate::alpaca::LC_DATA,
        url: "https://huggingface.co/datasets/tatsu-lab/alpaca_eval/resolve/main/df_gamed.csv",
        sha256: None,
        required: false,
    },
    Source {
        bench: Bench::MtBench,
        path: crate::mt_bench::QUESTIONS,
        url: "https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data/mt_bench/question.jsonl",
        sha256: Some("119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"),
        required: true,
    },
    Source {
        bench: Bench::MtBench,
        path: crate::mt_bench::JUDGE_PROMPTS,
        url: "https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data/judge_prompts.jsonl",
        sha256: Some("fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6"),
        required: true,
    },
    Source {
        bench: Bench::MtBench,
        path: crate::mt_bench::REFERENCE_ANSWERS,
        url: "https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl",
        sha256: Some("f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f"),
        required: true,
    },
    Source {
        bench: Bench::Flask,
        path: crate::flask::EVALUATION_SET,
        url: "https://raw.githubusercontent.com/kaistAI/FLASK/3b4e22bc34aa9dc15ea0c51be3cbf5f3c8b1b5e5/evaluation_set/flask_evaluation.jsonl",
        sha256: Some("791950bf1f159b048eba8fee205eba606926c25467a9a31e6f9b6affc2e3e13d"),
        required: true,
    },
    Source {
        bench: Bench::Flask,
        path: crate::flask::PROMPTS,
        url: "https://raw.githubusercontent.com/kaistAI/FLASK/3b4e22bc34aa9dc15ea0c51be3cbf5f3c8b1b5e5/gpt_review/src/prompt.jsonl",
        sha256: Some("64836bb1eb6940e7ddbbbf0ea66265191bfd49476036ca15fc2660bbfa326134"),
        required: true,
    },
    Source {
        bench: Bench::Flask,
        path: crate::flask::SKILLS,
        url: "https://raw.githubusercontent.com/kaistAI/FLASK/3b4e22bc34aa9dc15ea0c51be3cbf5f3c8b1b5e5/metadata_annotation/skillset/src/skillset_description.json",
        sha256: Some("78f03c29f5a6510b76b8a765cb539c302d69898b7e4d7c68372c9cc2427e595e"),
        required: true,
    },
];

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq)]
pub enum Fetched {
    /// Already present with the right digest.
    Present,
    Downloaded {
        bytes: usize,
    },
    /// An optional file that could not be fetched.
    Skipped {
        reason: String,
    },
}

/// Downloads `bench`'s files into `data` (skipping those already there and intact). `mirror`
/// replaces every source URL by `<mirror>/<path under the data folder>`, for a local copy.
pub async fn download(
    bench: Bench,
    data: &Path,
    mirror: Option<&str>,
    mut report: impl FnMut(&Source, &Fetched),
) -> Result<()> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("moa/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| EvalError::Invalid(e.to_string()))?;
    for source in SOURCES.iter().filter(|s| s.bench == bench) {
        let target = data.join(source.path);
        if let (Ok(bytes), Some(want)) = (std::fs::read(&target), source.sha256) {
            if sha256_hex(&bytes) == want {
                report(source, &Fetched::Present);
                continue;
            }
        }
        let url = match mirror {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), source.path),
            None => source.url.to_string(),
        };
        let result = fetch(&client, &url)
            .await
            .and_then(|bytes| match source.sha256 {
                Some(want) if sha256_hex(&bytes) != want => Err(EvalError::Download {
                    url: url.clone(),
                    message: format!(
                        "the file's SHA-256 is {}, not the pinned {want}",
                        sha256_hex(&bytes)
                    ),
                }),
                _ => Ok(bytes),
            });
        match result {
            Ok(bytes) => {
                crate::write_file(&target, &bytes)?;
                report(source, &Fetched::Downloaded { bytes: bytes.len() });
            }
            Err(e) if !source.required => report(
                source,
                &Fetched::Skipped {
                    reason: e.to_string(),
                },
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>> {
    let fail = |message: String| EvalError::Download {
        url: url.to_string(),
        message,
    };
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    Ok(response
        .bytes()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pinned_to_commits() {
        for source in &SOURCES {
            let url = source.url;
            assert!(url.starts_with("https://"), "{url}");
            if source.sha256.is_some() {
                assert!(
                    url.contains("cd543a149df8")
                        || url.contains("0e6d3e4beaab")
                        || url.contains("3b4e22bc34aa"),
                    "{url}"
                );
            }
        }
    }

    /// Serves files under `root` over HTTP/1.1 on loopback: enough for a mirror.
    async fn serve(root: std::path::PathBuf) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let root = root.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let head = |status: &str, len: usize| {
                        format!("HTTP/1.1 {status}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
                    };
                    match std::fs::read(root.join(path.trim_start_matches('/'))) {
                        Ok(body) => {
                            let _ = socket
                                .write_all(head("200 OK", body.len()).as_bytes())
                                .await;
                            let _ = socket.write_all(&body).await;
                        }
                        Err(_) => {
                            let _ = socket.write_all(head("404 Not Found", 0).as_bytes()).await;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_mirror_fills_the_data_folder_checks_digests_and_skips_what_is_there() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
        if !data.is_dir() {
            return;
        }
        let mirror = serve(data).await;
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        download(Bench::MtBench, dir.path(), Some(&mirror), |s, f| {
            seen.push((s.path, f.clone()))
        })
        .await
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|(_, f)| matches!(f, Fetched::Downloaded { .. })),
            "{seen:?}"
        );
        assert!(dir.path().join(crate::mt_bench::QUESTIONS).is_file());
        // Again: everything is already here.
        let mut again = Vec::new();
        download(Bench::MtBench, dir.path(), Some(&mirror), |_, f| {
            again.push(f.clone())
        })
        .await
        .unwrap();
        assert!(again.iter().all(|f| *f == Fetched::Present));
        // AlpacaEval: the optional LC file is missing from the mirror and skipped, not fatal.
        let mut alpaca = Vec::new();
        download(Bench::AlpacaEval, dir.path(), Some(&mirror), |s, f| {
            alpaca.push((s.path, f.clone()))
        })
        .await
        .unwrap();
        assert!(
            matches!(alpaca[2], (crate::alpaca::LC_DATA, Fetched::Skipped { .. })),
            "{alpaca:?}"
        );
        // A damaged download is refused by its digest.
        let bad = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bad.path().join("mt_bench/reference_answer")).unwrap();
        std::fs::write(bad.path().join(crate::mt_bench::QUESTIONS), "not the file").unwrap();
        let bad_mirror = serve(bad.path().to_path_buf()).await;
        let err = download(
            Bench::MtBench,
            dir.path().join("other").as_path(),
            Some(&bad_mirror),
            |_, _| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("SHA-256"), "{err}");
    }

    /// The pinned digests are those of the copies in ../shared/data (same git blobs as the
    /// pinned commits, per its SOURCE.md), when that folder is present.
    #[test]
    fn digests_match_the_shared_copies() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
        if !data.is_dir() {
            return;
        }
        for source in SOURCES.iter().filter(|s| s.sha256.is_some()) {
            let bytes = std::fs::read(data.join(source.path)).unwrap();
            assert_eq!(
                Some(sha256_hex(&bytes).as_str()),
                source.sha256,
                "{}",
                source.path
            );
        }
    }
}
