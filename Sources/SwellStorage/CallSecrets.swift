/// The secrets of the CSI call being served (CreateVolume's provisioner secret, DeleteVolume's,
/// ControllerExpandVolume's, CreateSnapshot's), for the backends that act on another system with
/// them (rbd). The Controller service sets them around the backend call; a backend reads them
/// instead of having them threaded through every method of the protocol.
public enum CallSecrets {
  @TaskLocal public static var current: [String: String] = [:]
}
