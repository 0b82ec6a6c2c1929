import Hummingbird
import PushProtocol

/// An API failure as protocol.md §2 spells it: a status and
/// `{"error": {"code": "<word>", "message": "<text>"}}`.
struct APIError: HTTPResponseError {
    let status: HTTPResponse.Status
    let code: String
    let message: String
    /// For 405: the methods the path does accept (the `Allow` header).
    var allow: [HTTPRequest.Method] = []

    init(status: HTTPResponse.Status, code: String, message: String, allow: [HTTPRequest.Method] = []) {
        self.status = status
        self.code = code
        self.message = message
        self.allow = allow
    }

    static func badRequest(_ message: String, code: String = "bad_request") -> APIError {
        APIError(status: .badRequest, code: code, message: message)
    }
    static let unauthorized = APIError(status: .unauthorized, code: "unauthorized", message: "missing or wrong API key")
    static let notFound = APIError(status: .notFound, code: "not_found", message: "no such endpoint")
    static func payloadTooLarge(_ message: String) -> APIError {
        APIError(status: .contentTooLarge, code: "payload_too_large", message: message)
    }
    static func tooManyRequests(_ message: String) -> APIError {
        APIError(status: .tooManyRequests, code: "too_many_requests", message: message)
    }
    static func unavailable(_ message: String) -> APIError {
        APIError(status: .serviceUnavailable, code: "unavailable", message: message)
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = JSONBody.response(status: status, bytes: body)
        if !allow.isEmpty { response.headers[.allow] = allow.map(\.rawValue).joined(separator: ", ") }
        return response
    }

    /// `{"error": {"code": ..., "message": ...}}`
    var body: ByteBuffer { JSONBody.bytes(["error": ["code": code, "message": message]]) }

    /// The API's form of any error a handler, Hummingbird or the store threw.
    static func from(_ error: any Error) -> APIError {
        switch error {
        case let error as APIError:
            return error
        case let error as HTTPError:
            switch error.status {
            case .notFound: return .notFound
            case .methodNotAllowed:
                return APIError(status: .methodNotAllowed, code: "method_not_allowed", message: "method not allowed on this path")
            case .contentTooLarge: return .payloadTooLarge("request body too large")
            case .badRequest: return .badRequest(error.body ?? "bad request")
            default: return APIError(status: error.status, code: "error", message: error.body ?? "\(error.status)")
            }
        default:
            return APIError(status: .internalServerError, code: "internal", message: "internal error")
        }
    }
}

/// Turns every error into the API's JSON error body, and checks the API key on `/v1/`. A known
/// path asked with a method it does not take is 405 with `Allow`, not 404.
struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let keys: SecretSet
    /// Every route: method and path pattern (`{name}` matches one segment).
    let routes: [(method: HTTPRequest.Method, path: String)]

    @concurrent
    func handle(
        _ request: Request, context: Context, next: @concurrent (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            if request.uri.path.hasPrefix("/v1/"), !keys.admits(authorization: request.headers[.authorization]) {
                throw APIError.unauthorized
            }
            return try await next(request, context)
        } catch {
            var failure = APIError.from(error)
            if failure.status == .notFound {
                let allowed = routes.filter { Self.matches($0.path, request.uri.path) }.map(\.method)
                // A 404 of a route that takes this method is the handler's own (an unknown id).
                if !allowed.isEmpty && !allowed.contains(request.method) {
                    failure = APIError(
                        status: .methodNotAllowed, code: "method_not_allowed",
                        message: "\(request.method) is not allowed here; use \(allowed.map(\.rawValue).joined(separator: " or "))",
                        allow: allowed
                    )
                }
            }
            return try failure.response(from: request, context: context)
        }
    }

    static func matches(_ pattern: String, _ path: String) -> Bool {
        let expected = pattern.split(separator: "/", omittingEmptySubsequences: false)
        let actual = path.split(separator: "/", omittingEmptySubsequences: false)
        guard expected.count == actual.count else { return false }
        return zip(expected, actual).allSatisfy { want, got in want.hasPrefix("{") ? !got.isEmpty : want == got }
    }
}
