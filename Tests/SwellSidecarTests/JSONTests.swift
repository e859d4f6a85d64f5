import Testing
@testable import SwellKube
