import Hummingbird
import PushProtocol

/// An API failure as protocol.md §2 spells it: a status and
/// `{"error": {"code": "<word>", "message": "<text>"}}`.
struct APIError: HTTPResponseError {
    let status: HTTPResponse.Status
    let code: String
    let message: String

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
        JSONBody.response(status: status, ["error": ["code": code, "message": message]])
    }

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

/// Turns every error into the API's JSON error body, and checks the API key on `/v1/`.
struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let keys: SecretSet

    @concurrent
    func handle(
        _ request: Request, context: Context, next: @concurrent (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            if keys.isEnabled, request.uri.path.hasPrefix("/v1/") {
                guard let header = request.headers[.authorization], header.hasPrefix("Bearer "),
                    keys.accepts(header.dropFirst("Bearer ".count))
                else { throw APIError.unauthorized }
            }
            return try await next(request, context)
        } catch {
            return try APIError.from(error).response(from: request, context: context)
        }
    }
}
