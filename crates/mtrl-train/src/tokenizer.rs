//! [`Tokenizer`]: Hugging Face `tokenizers` with the special tokens a chat model needs, built
//! from `tokenizer.json` or from GGUF metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::AddedToken;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use crate::Error;

/// A tokenizer with its beginning and end-of-sequence tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<String>,
    eos: Option<String>,
    stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// From `tokenizer.json`, with the bos and eos tokens of `tokenizer_config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Tokenizer`].
    pub fn from_hf_files(tokenizer_json: &Path, config: Option<&Path>) -> Result<Self, Error> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
        let (mut bos, mut eos) = (None, None);
        if let Some(path) = config {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
            let token = |v: &serde_json::Value| -> Option<String> {
                match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                    _ => None,
                }
            };
            bos = token(&json["bos_token"]);
            eos = token(&json["eos_token"]);
        }
        Ok(Self::with_specials(inner, bos, eos))
    }

    /// A small tokenizer for models trained from scratch: each run of letters (and `_`) is one
    /// token when `words` has it, and otherwise splits into the longest known pieces down to
    /// single characters; every digit, whitespace and other ASCII character is a token of its
    /// own; `specials` (chat markers, the end of turn) are special tokens. Decoding
    /// concatenates, so any ASCII text round-trips exactly; other characters encode as `<unk>`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] when the tokenizer cannot be built.
    pub fn from_words(words: &[String], specials: &[String], eos: &str) -> Result<Self, Error> {
        use tokenizers::DecoderWrapper;
        use tokenizers::SplitDelimiterBehavior;
        use tokenizers::decoders::fuse::Fuse;
        use tokenizers::decoders::sequence::Sequence as DecoderSequence;
        use tokenizers::models::wordpiece::WordPiece;
        use tokenizers::normalizers::replace::Replace;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut add = |w: String| {
            let id = vocab.len() as u32;
            vocab.entry(w).or_insert(id);
        };
        add("<unk>".into());
        for s in specials {
            add(s.clone());
        }
        for c in (0x20u8..0x7F).map(char::from).chain(['\n', '\t', '\r']) {
            add(c.to_string());
            if c.is_ascii_alphabetic() || c == '_' {
                add(format!("##{c}"));
            }
        }
        let mut sorted: Vec<&String> = words.iter().collect();
        sorted.sort();
        sorted.dedup();
        for w in sorted {
            if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
                add(w.clone());
            }
        }
        let model = WordPiece::builder()
            .vocab(vocab.into_iter().collect::<Vocab>())
            .unk_token("<unk>".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(1 << 16)
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let split = Split::new(
            SplitPattern::Regex(r"[A-Za-z_]+|[0-9]|\s|[^A-Za-z_0-9\s]".into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let strip = Replace::new("##", "").map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Split(split)));
        inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
            DecoderWrapper::Replace(strip),
            DecoderWrapper::Fuse(Fuse::new()),
        ]))));
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&added);
        Ok(Self::with_specials(inner, None, Some(eos.to_string())))
    }

    /// From GGUF metadata (`tokenizer.ggml.*`): a byte-level BPE with its merges, the control
    /// tokens as special tokens, and the pre-tokenizer the metadata names (`smollm` splits digits
    /// one by one before GPT-2's byte-level regex).
    ///
    /// # Errors
    /// [`Error::Tokenizer`] for a tokenizer kind other than `gpt2`, or missing metadata.
    pub fn from_gguf(md: &HashMap<String, gguf_file::Value>) -> Result<Self, Error> {
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| Error::Tokenizer(format!("GGUF metadata lacks {k}")))
        };
        let kind = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        if kind != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer {kind:?} is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let strings = |k: &str| -> Result<Vec<String>, Error> {
            get(k)?
                .to_vec()
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| Error::Tokenizer(e.to_string()))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let merges: Vec<(String, String)> = merges
            .iter()
            .filter_map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            "smollm" => Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])
            .into(),
            _ => byte_level.into(),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(tok, t)| AddedToken::from(tok.clone(), *t == 3))
            .collect();
        inner.add_special_tokens(&special);
        let id = |k: &str| {
            md.get(k)
                .and_then(|v| v.to_u32().ok())
                .and_then(|i| tokens.get(i as usize).cloned())
        };
        Ok(Self::with_specials(
            inner,
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
        ))
    }

    fn with_specials(
        inner: tokenizers::Tokenizer,
        bos: Option<String>,
        eos: Option<String>,
    ) -> Self {
        let mut stop_ids: Vec<u32> = Vec::new();
        for t in eos.iter().map(String::as_str).chain([
            "<|im_end|>",
            "<|eot_id|>",
            "<|endoftext|>",
            "<|end_of_text|>",
        ]) {
            if let Some(id) = inner.token_to_id(t) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        Self {
            inner,
            bos,
            eos,
            stop_ids,
        }
    }

    /// Token ids of `text`, adding no special tokens (the chat template writes them); special
    /// tokens spelled in the text are recognised.
    ///
    /// # Errors
    /// [`Error::Tokenizer`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// The text of `ids`, special tokens included.
    ///
    /// # Errors
    /// [`Error::Tokenizer`].
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The ids that end an assistant turn (the eos token and the usual end-of-turn tokens the
    /// vocabulary has).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The beginning-of-sequence token, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_deref()
    }

    /// The end-of-sequence token, if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_deref()
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
