//! The Engine: owns a loaded artifact, its executor and the KV cache state, and generates — prefill
//! the prompt once, then decode one token per step through the cache.

use crate::executor::{Executor, ReferenceExecutor};
use crate::CpuExecutor;
use crate::{Artifact, KernelProfile, RuntimeError, Sampler, SamplingParams, Tokenizer};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tessera_codegen_cpu::Backend;
use tessera_ir::artifact::Manifest;
use tessera_ir::interp::Tensor;
use tessera_ir::{eval_shape, DimEnv, ModelInfo};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop after the model emits one of its end-of-sequence tokens.
    pub stop_at_eos: bool,
    /// Keep the logits row behind every generated token (for `--dump-logits` and tests).
    pub keep_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 32,
            sampling: SamplingParams::default(),
            stop_at_eos: true,
            keep_logits: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` were generated.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    pub generated: Vec<u32>,
    /// Row i: the logits the i-th generated token was chosen from (empty unless `keep_logits`).
    pub logits: Vec<Vec<f32>>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    /// Decode steps run (each feeds one generated token back).
    pub decode_steps: usize,
    pub decode_seconds: f64,
}

impl Generation {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_seconds)
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_seconds)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// How to load an artifact; [`Default`] is what [`Engine::load`] uses.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Threads the CPU executor splits each kernel launch across (the calling thread included);
    /// `None` is the host's available parallelism. Other targets ignore it.
    pub threads: Option<usize>,
    /// What compiles the CPU executor's kernels (`--cpu-backend`); the default is the best this
    /// build has. Other targets ignore it.
    pub cpu_backend: Backend,
    /// The Vulkan adapter a `--target vulkan` artifact runs on (`--device`, as `tessera devices`
    /// numbers them). Other targets ignore it.
    pub device: usize,
}

/// A loaded model ready to generate.
pub struct Engine {
    artifact: Arc<Artifact>,
    tokenizer: Option<Arc<Tokenizer>>,
    executor: Box<dyn Executor>,
    /// Whether the executor keeps the KV cache itself (on its device) for this generation;
    /// otherwise the engine holds it and passes it in and out of every run.
    resident_state: bool,
}

impl Engine {
    /// Loads and verifies an artifact and prepares the executor for its target, with the default
    /// [`LoadOptions`].
    pub fn load(path: &Path) -> Result<Engine, RuntimeError> {
        Engine::load_with(path, &LoadOptions::default())
    }

    /// [`Engine::load`] with explicit options (e.g. the CPU thread count for `--threads`).
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Engine, RuntimeError> {
        let artifact = Arc::new(Artifact::open(path)?);
        let tokenizer = artifact
            .tokenizer_json()
            .map(Tokenizer::from_json)
            .transpose()?
            .map(Arc::new);
        let executor: Box<dyn Executor> = match artifact.manifest().target.as_str() {
            "reference" => Box::new(ReferenceExecutor::new(&artifact)?),
            "cpu" => {
                let threads = options
                    .threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                Box::new(CpuExecutor::new(
                    Arc::clone(&artifact),
                    threads,
                    options.cpu_backend,
                )?)
            }
            #[cfg(feature = "vulkan")]
            "vulkan" => Box::new(crate::vulkan::VulkanExecutor::new(
                &artifact,
                options.device,
            )?),
            other => {
                let supported = if cfg!(feature = "vulkan") {
                    "reference, cpu, vulkan"
                } else {
                    "reference, cpu; vulkan needs the `vulkan` feature"
                };
                return Err(RuntimeError::Unsupported(format!(
                    "{}: target `{other}` cannot be executed by this runtime (supported: {supported})",
                    path.display()
                )));
            }
        };
        Ok(Engine {
            artifact,
            tokenizer,
            executor,
            resident_state: false,
        })
    }

    /// Starts or stops timing each kernel launch (`tessera bench --profile`); an error for an
    /// executor that cannot (the reference interpreter).
    pub fn set_profiling(&mut self, on: bool) -> Result<(), RuntimeError> {
        if self.executor.set_profiling(on) {
            Ok(())
        } else {
            Err(RuntimeError::Unsupported(format!(
                "profiling kernels of target `{}`: only --target cpu and vulkan artifacts are profiled",
                self.artifact.manifest().target
            )))
        }
    }

    /// The kernel times since profiling started, one row per kernel of each entry point run.
    pub fn take_profile(&mut self) -> Vec<KernelProfile> {
        self.executor.take_profile()
    }

    pub fn manifest(&self) -> &Manifest {
        self.artifact.manifest()
    }

    pub fn info(&self) -> &ModelInfo {
        &self.manifest().module.info
    }

    /// The embedded tokenizer, shared so callers can decode while the engine generates.
    pub fn tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }

    /// Encodes `text` with the embedded tokenizer; an artifact without one is an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, RuntimeError> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            RuntimeError::Request(format!(
                "{} has no tokenizer (the model folder had no tokenizer.json): pass token ids with --prompt-ids",
                self.artifact.path().display()
            ))
        })?;
        tok.encode(text)
    }

    /// Generates up to `opts.max_tokens` tokens after `prompt`, calling `on_token` as each is chosen.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation, RuntimeError> {
        self.check_request(prompt, opts.max_tokens)?;
        let mut sampler = Sampler::new(opts.sampling.clone())?;
        self.resident_state = self.executor.reset_state(1)?;
        let mut state = if self.resident_state {
            BTreeMap::new()
        } else {
            self.initial_state()?
        };
        let mut gen = Generation {
            generated: Vec::new(),
            logits: Vec::new(),
            finish: FinishReason::Length,
            prompt_tokens: prompt.len(),
            prefill_seconds: 0.0,
            decode_steps: 0,
            decode_seconds: 0.0,
        };
        if opts.max_tokens == 0 {
            return Ok(gen);
        }
        let start = Instant::now();
        let mut logits = self.step("prefill", prompt, 0, &mut state)?;
        gen.prefill_seconds = start.elapsed().as_secs_f64();
        let eos = self.info().eos_token_ids.clone();
        let decode_start = Instant::now();
        loop {
            let token = sampler.sample(&logits)?;
            gen.generated.push(token);
            if opts.keep_logits {
                gen.logits.push(std::mem::take(&mut logits));
            }
            on_token(token);
            if opts.stop_at_eos && eos.contains(&token) {
                gen.finish = FinishReason::Eos;
                break;
            }
            if gen.generated.len() == opts.max_tokens {
                break;
            }
            let past = prompt.len() + gen.generated.len() - 1;
            logits = self.step("decode", &[token], past, &mut state)?;
            gen.decode_steps += 1;
        }
        gen.decode_seconds = decode_start.elapsed().as_secs_f64();
        Ok(gen)
    }

    fn check_request(&self, prompt: &[u32], max_tokens: usize) -> Result<(), RuntimeError> {
        let info = self.info();
        if prompt.is_empty() {
            return Err(RuntimeError::Request(
                "the prompt is empty: give at least one token".into(),
            ));
        }
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(RuntimeError::Request(format!(
                "prompt token id {bad} is outside the vocabulary of {} tokens",
                info.vocab_size
            )));
        }
        if prompt.len() + max_tokens > info.max_context {
            return Err(RuntimeError::Request(format!(
                "prompt of {} tokens + {max_tokens} new tokens exceeds the model's context of {} tokens",
                prompt.len(),
                info.max_context
            )));
        }
        Ok(())
    }

    /// Empty KV cache tensors for one sequence (`batch` = 1, `past` = 0).
    fn initial_state(&self) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
        let env: DimEnv = [("batch".to_string(), 1), ("past".to_string(), 0)].into();
        self.manifest()
            .module
            .state
            .iter()
            .map(|s| {
                let shape = eval_shape(&s.shape, &env)
                    .map_err(|e| RuntimeError::Unsupported(format!("state `{}`: {e}", s.name)))?;
                let numel = shape.iter().product();
                Ok((s.name.clone(), Tensor::f32(shape, vec![0.0; numel])))
            })
            .collect()
    }

    /// Runs one entry point on `tokens` at positions `past..`, updating the state; returns the
    /// logits row of the last position.
    fn step(
        &mut self,
        entry: &str,
        tokens: &[u32],
        past: usize,
        state: &mut BTreeMap<String, Tensor>,
    ) -> Result<Vec<f32>, RuntimeError> {
        let n = tokens.len();
        let mut inputs = std::mem::take(state);
        inputs.insert(
            "tokens".into(),
            Tensor::i32(vec![1, n], tokens.iter().map(|&t| t as i32).collect()),
        );
        inputs.insert(
            "positions".into(),
            Tensor::i32(vec![1, n], (past..past + n).map(|p| p as i32).collect()),
        );
        let mut outputs = self.executor.run(entry, &inputs)?;
        let kept_outside = if self.resident_state {
            &[][..]
        } else {
            &self.artifact.manifest().module.state[..]
        };
        for spec in kept_outside {
            let t = outputs.remove(&spec.name).ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "entry point `{entry}` did not return state `{}`",
                    spec.name
                ))
            })?;
            state.insert(spec.name.clone(), t);
        }
        let logits = outputs.remove("logits").ok_or_else(|| {
            RuntimeError::Unsupported(format!("entry point `{entry}` has no `logits` output"))
        })?;
        match logits.as_f32() {
            Some(v) if v.len() == self.info().vocab_size => Ok(v.to_vec()),
            _ => Err(RuntimeError::Unsupported(format!(
                "entry point `{entry}` returned logits {:?} {:?}, expected f32 [1, {}]",
                logits.dtype,
                logits.shape,
                self.info().vocab_size
            ))),
        }
    }
}
