//! Where each setting came from, so an error names it as the user wrote it:
//! the variable when the value came from the environment, the flag otherwise.

use std::collections::HashMap;

use std::path::PathBuf;

use anyhow::bail;
use clap::ArgMatches;
use clap::parser::ValueSource;

use super::ApiKeySetting;
use super::args::serve_command;
use crate::smileid::ApiKey;

/// Where each setting came from, to name it as the user wrote it.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Setting id → its flag, its variable, and whether the variable gave the value.
    names: HashMap<String, (String, Option<String>, bool)>,
}

impl Sources {
    pub(super) fn from_matches(matches: &ArgMatches) -> Self {
        let names = serve_command()
            .get_arguments()
            .map(|arg| {
                let id = arg.get_id().as_str().to_owned();
                let flag = arg.get_long().map_or_else(|| id.clone(), |long| format!("--{long}"));
                let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
                let from_env = matches!(matches.value_source(&id), Some(ValueSource::EnvVariable));
                (id, (flag, env, from_env))
            })
            .collect();
        Self { names }
    }

    /// The setting `id` as the user set it: its variable when the value came
    /// from the environment, else its flag (with the variable as an alternative).
    pub fn name(&self, id: &str) -> String {
        match self.names.get(id) {
            Some((_, Some(env), true)) => env.clone(),
            Some((flag, Some(env), false)) => format!("{flag} ({env})"),
            Some((flag, None, _)) => flag.clone(),
            None => id.to_owned(),
        }
    }
}

/// Rewrites clap's "invalid value for '--flag'" to name the variable when the
/// value came from the environment, since that is what the user wrote.
pub fn name_environment_errors(error: clap::Error, command: &clap::Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return error;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (error.get(ContextKind::InvalidArg), error.get(ContextKind::InvalidValue))
    else {
        return error;
    };
    let long = arg
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches("--");
    let from_env = command.get_arguments().find_map(|candidate| {
        let env = candidate.get_env()?;
        let set = std::env::var_os(env).is_some_and(|set| set.to_string_lossy() == value.as_str());
        (candidate.get_long() == Some(long) && set).then(|| env.to_string_lossy().into_owned())
    });
    let Some(env) = from_env else {
        return error;
    };
    let reason = std::error::Error::source(&error).map_or_else(String::new, |source| format!(": {source}"));
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("invalid value '{value}' for {env}{reason}\n"),
    )
}

/// Where the API key comes from: the file `SMILEID_API_KEY_FILE` names (read
/// by the wiring), else `SMILEID_API_KEY`, never a flag.
pub(super) fn api_key(file: Option<PathBuf>) -> anyhow::Result<ApiKeySetting> {
    if let Some(path) = file {
        return Ok(ApiKeySetting::File(path));
    }
    match std::env::var("SMILEID_API_KEY") {
        Ok(key) if !key.trim().is_empty() => Ok(ApiKeySetting::Value(ApiKey::new(key.trim()))),
        _ => bail!("SMILEID_API_KEY is not set: give the Smile ID API key in SMILEID_API_KEY or SMILEID_API_KEY_FILE"),
    }
}
