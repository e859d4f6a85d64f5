/// Swell's version and the CSI spec it implements.
public enum SwellVersion {
  public static let version = "0.1.0"
  public static let csiSpec = "1.12.0"
}
