//! Pre-initialising a plugin at start-up (wasmtime's Wizer).
//!
//! A plugin's `init` parses its configuration and builds its state; doing that again in
//! every session's instance cost most of the instance's time and touched most of its
//! memory image. Instead, at start-up the component is instrumented so its memories
//! and globals can be read, instantiated once, `init` is called with the plugin's
//! configuration, and the state that leaves behind becomes the data image of a new
//! component. Every session's instance starts from that image: as if `init` had just
//! returned, without running it.

use wasmtime::{
    Store,
    component::{Instance, Lift, WasmList},
};
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

use super::host::PluginState;

/// The pre-initialiser. `init` is called by the host itself (it takes the plugin's
/// configuration and returns its hooks), and stays exported so the bindings still
/// find every function of the ABI.
pub(super) fn wizer() -> Wizer {
    let mut wizer = Wizer::new();
    wizer.init_func("init").keep_init_func(true);
    wizer
}

/// Instruments a component so its state can be read after `init`.
pub(super) fn instrument(bytes: &[u8]) -> wasmtime::Result<(ComponentContext<'_>, Vec<u8>)> {
    wizer().instrument_component(bytes)
}

/// The component whose data image is the state `instance` holds now.
pub(super) async fn take(
    context: &ComponentContext<'_>,
    store: &mut Store<PluginState>,
    instance: Instance,
) -> wasmtime::Result<Vec<u8>> {
    wizer()
        .snapshot_component(context, &mut Access { store, instance })
        .await
}

/// Reads an instrumented instance's memories and globals for the snapshot, through
/// the functions the instrumentation exported.
struct Access<'a> {
    store: &'a mut Store<PluginState>,
    instance: Instance,
}

impl Access<'_> {
    /// Calls `interface#func`, which takes nothing and returns one `R`. The
    /// instrumentation guarantees both exist with that type; anything else is a bug
    /// in the instrumentation, hence the panics (the trait has no error path).
    async fn call<R: Lift + Send + Sync + 'static, T>(
        &mut self,
        interface: &str,
        func: &str,
        read: impl FnOnce(&mut Store<PluginState>, R) -> T,
    ) -> T {
        let (_, interface_index) = self
            .instance
            .get_export(&mut *self.store, None, interface)
            .expect("instrumented component exports its access interface");
        let (_, func_index) = self
            .instance
            .get_export(&mut *self.store, Some(&interface_index), func)
            .expect("access interface exports the function");
        let typed = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, func_index)
            .expect("access function has the expected type");
        let (value,) = typed
            .call_async(&mut *self.store, ())
            .await
            .expect("reading an instrumented instance's state does not trap");
        read(&mut *self.store, value)
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        interface: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(interface, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(&*store))
        })
        .await
    }

    async fn call_func_ret_s32(&mut self, interface: &str, func: &str) -> i32 {
        self.call(interface, func, |_, value| value).await
    }

    async fn call_func_ret_s64(&mut self, interface: &str, func: &str) -> i64 {
        self.call(interface, func, |_, value| value).await
    }

    async fn call_func_ret_f32(&mut self, interface: &str, func: &str) -> u32 {
        self.call(interface, func, |_, value: f32| value.to_bits())
            .await
    }

    async fn call_func_ret_f64(&mut self, interface: &str, func: &str) -> u64 {
        self.call(interface, func, |_, value: f64| value.to_bits())
            .await
    }
}
