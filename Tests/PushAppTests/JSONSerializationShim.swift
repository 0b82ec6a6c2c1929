import Foundation

typealias NSNullShim = NSNull

enum JSONSerializationShim {
    static func object(_ text: String) throws -> [String: Any]? {
        try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
    }
}
