module github.com/ws2api/ws2api

go 1.26.8

require (
	github.com/VictoriaMetrics/metrics v1.44.0
	github.com/gorilla/websocket v1.5.3
	github.com/klauspost/compress v1.18.0
	github.com/lesismal/nbio v1.6.12
	github.com/lorenzodonini/ocpp-go v0.18.0
	github.com/redis/rueidis v1.0.79
	golang.org/x/sys v0.47.0
)

require (
	github.com/go-playground/locales v0.12.1 // indirect
	github.com/go-playground/universal-translator v0.16.0 // indirect
	github.com/gorilla/mux v1.7.3 // indirect
	github.com/leodido/go-urn v1.1.0 // indirect
	github.com/relvacode/iso8601 v1.3.0 // indirect
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
	gopkg.in/go-playground/validator.v9 v9.30.0 // indirect
)
