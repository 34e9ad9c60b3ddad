//! Text in and out through the Hugging Face `tokenizers` crate, from the tokenizer.json embedded in
//! the artifact.

use crate::RuntimeError;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_json(json: &str) -> Result<Tokenizer, RuntimeError> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    /// Encodes like transformers' `tokenizer(text)`: special tokens (e.g. BOS) added by the
    /// tokenizer's own post-processor.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, RuntimeError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// An incremental decoder for streaming output: yields text only once it is complete UTF-8.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(true),
        }
    }

    /// Decodes, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, RuntimeError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))
    }
}

/// Decodes generated tokens one at a time (see [`Tokenizer::stream`]).
pub struct TextStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
}

impl TextStream<'_> {
    /// The text `token` completes, if any yet.
    pub fn step(&mut self, token: u32) -> Result<Option<String>, RuntimeError> {
        self.inner
            .step(token)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))
    }
}
