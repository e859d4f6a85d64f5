/// The secrets of the CSI call being served, for the backends that act on another system with
/// them (rbd). The plugin's one interceptor (`RPCInterceptor`) opens this scope around every RPC
/// whose request carries a `secrets` field, before the handler runs, so no step of a handler (a
/// source's lookup, a validation) can fall outside it; a backend reads them instead of having them
/// threaded through every method of the protocol. Calls whose request has no secrets field
/// (ListVolumes, ControllerGetVolume, GetCapacity) see none.
public enum CallSecrets {
  @TaskLocal public static var current: [String: String] = [:]
}
