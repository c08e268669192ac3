//! One plugin instance and its hook calls: each call armed with the plugin's
//! deadline, and its failure told in the plugin author's terms.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use wasmtime::{Store, Trap, component::Resource};

use metrics::gauge;

use super::{
    MessageResource, Plugin, PluginError, SessionStore, abi,
    engine::PoolSlot,
    error::trap,
    host,
    ticker::{Running, Ticker},
    view,
};
use crate::telemetry;

/// One plugin's instance: a session's own, or lent to it for one call if the plugin
/// is shared.
pub struct PluginInstance {
    pub(super) store: Store<host::PluginState>,
    pub(super) bindings: Option<Plugin>,
    pub(super) timeout: Duration,
    /// The memory cap in bytes.
    pub(super) memory: usize,
    pub(super) ticker: Arc<Ticker>,
    /// The hooks the plugin asked for.
    pub hooks: view::Hooks,
    /// The pool slot of a pooled instance: given back after the store (declared
    /// first) is dropped.
    pub(super) _slot: Option<PoolSlot>,
}

impl Drop for PluginInstance {
    fn drop(&mut self) {
        if telemetry::on() {
            gauge!(telemetry::PLUGIN_INSTANCES).decrement(1.0);
        }
    }
}

impl PluginInstance {
    /// Sets the deadline for the next call, and keeps the epoch ticking while the
    /// returned guard lives.
    pub(super) fn arm(&mut self) -> Running {
        let state = self.store.data_mut();
        state.deadline = Instant::now() + self.timeout;
        state.panic = None;
        state.limits.memory_refused = false;
        self.store.set_epoch_deadline(1);
        self.ticker.enter()
    }

    /// Why the call that just returned `error` failed, in the plugin author's terms:
    /// its own panic message, its memory or time limit, or wasmtime's trap.
    pub(super) fn failure(&mut self, error: wasmtime::Error) -> PluginError {
        let state = self.store.data_mut();
        if let Some(message) = state.panic.take() {
            return PluginError::Panic(message);
        }
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            return PluginError::Timeout(self.timeout.as_millis());
        }
        if state.limits.memory_refused {
            return PluginError::MemoryLimit(self.memory >> 20);
        }
        trap(error)
    }

    /// Lends the instance `store` for the next call: the values its plugin keeps for
    /// the session that call serves.
    pub fn lend_store(&mut self, store: SessionStore) {
        self.store.data_mut().session_store = store;
    }

    /// Takes back the lent session store after a call, with what the call changed.
    pub fn take_store(&mut self) -> SessionStore {
        std::mem::take(&mut self.store.data_mut().session_store)
    }

    /// The bindings, the store and the session's version, ready for a call that
    /// runs while the guard lives.
    fn parts(
        &mut self,
        session: &view::SessionInfo,
    ) -> (&Plugin, &mut Store<host::PluginState>, u32, Running) {
        let running = self.arm();
        let version = self.store.data_mut().session_version(session);
        (
            self.bindings.as_ref().expect("instantiated"),
            &mut self.store,
            version,
            running,
        )
    }

    /// The connect hook.
    pub async fn connect(
        &mut self,
        session: &view::SessionInfo,
    ) -> Result<view::Verdict, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings.call_on_connect(store, version).await;
        result.map(Into::into).map_err(|error| self.failure(error))
    }

    /// The HELO hook.
    pub async fn helo(
        &mut self,
        session: &view::SessionInfo,
        name: &str,
    ) -> Result<view::HeloOutcome, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings.call_on_helo(store, version, name).await;
        result.map(Into::into).map_err(|error| self.failure(error))
    }

    /// The MAIL hook.
    pub async fn mail(
        &mut self,
        session: &view::SessionInfo,
        sender: &str,
        params: &[view::Param],
    ) -> Result<view::PathOutcome, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let params: Vec<abi::Param> = params.iter().map(Into::into).collect();
        let result = bindings.call_on_mail(store, version, sender, &params).await;
        result.map(Into::into).map_err(|error| self.failure(error))
    }

    /// The RCPT hook.
    pub async fn rcpt(
        &mut self,
        session: &view::SessionInfo,
        envelope: &view::Envelope,
        recipient: &str,
        params: &[view::Param],
    ) -> Result<view::PathOutcome, PluginError> {
        let envelope = self.store.data_mut().envelope_ref(envelope);
        let (bindings, store, version, _running) = self.parts(session);
        let params: Vec<abi::Param> = params.iter().map(Into::into).collect();
        let result = bindings
            .call_on_rcpt(store, version, envelope, recipient, &params)
            .await;
        result.map(Into::into).map_err(|error| self.failure(error))
    }

    /// The DATA hook. The message is lent to the plugin for this call only.
    pub async fn data(
        &mut self,
        session: &view::SessionInfo,
        envelope: &view::Envelope,
        message: MessageResource,
    ) -> Result<view::DataOutcome, PluginError> {
        let owned = self
            .store
            .data_mut()
            .table()
            .push(message)
            .map_err(|error| PluginError::Trap {
                message: error.to_string(),
                backtrace: None,
            })?;
        let borrowed = Resource::new_borrow(owned.rep());
        let envelope = self.store.data_mut().envelope_ref(envelope);
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings
            .call_on_data(&mut *store, version, envelope, borrowed)
            .await;
        let _ = store.data_mut().table().delete(owned);
        result.map(Into::into).map_err(|error| self.failure(error))
    }

    /// The AUTH hook.
    pub async fn auth(
        &mut self,
        session: &view::SessionInfo,
        mechanism: &str,
        login: &str,
    ) -> Result<view::Verdict, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings
            .call_on_auth(store, version, mechanism, login)
            .await;
        result.map(Into::into).map_err(|error| self.failure(error))
    }

    /// A verifier's password check. The password goes to this plugin only.
    pub async fn verify_login(
        &mut self,
        session: &view::SessionInfo,
        mechanism: &str,
        login: &str,
        password: &str,
    ) -> Result<view::LoginCheck, PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings
            .call_verify_login(store, version, mechanism, login, password)
            .await;
        result.map(Into::into).map_err(|error| self.failure(error))
    }

    /// The session-end hook.
    pub async fn session_end(&mut self, session: &view::SessionInfo) -> Result<(), PluginError> {
        let (bindings, store, version, _running) = self.parts(session);
        let result = bindings.call_on_session_end(store, version).await;
        result.map_err(|error| self.failure(error))
    }
}
