package j1msky

import (
	"context"
	"net/http"
)

// QuoteRequest is the body of POST /pricing/quote (docs/pricing.md).
type QuoteRequest struct {
	Model                 string `json:"model"`
	Complexity            string `json:"complexity"`        // low, medium or high
	Segment               string `json:"segment,omitempty"` // enterprise, mid_market (the default), smb, startup
	EstimatedInputTokens  int    `json:"estimated_input"`
	EstimatedOutputTokens int    `json:"estimated_output"`
	DeliveryType          string `json:"delivery_type,omitempty"` // task (the default), subscription, enterprise
}

// QuoteDetails is a quote's numbers.
type QuoteDetails struct {
	Model                 string  `json:"model"`
	Complexity            string  `json:"complexity"`
	Segment               string  `json:"segment"`
	EstimatedInputTokens  int     `json:"estimated_input_tokens"`
	EstimatedOutputTokens int     `json:"estimated_output_tokens"`
	InternalCost          float64 `json:"internal_cost"`
	BaseMarkup            float64 `json:"base_markup"`
	SegmentAdjustment     float64 `json:"segment_adjustment"`
	FinalMarkup           float64 `json:"final_markup"`
	RecommendedPrice      float64 `json:"recommended_price"`
	GrossMarginPct        float64 `json:"gross_margin_pct"`
	MarginBand            string  `json:"margin_band"` // strong, healthy or at_risk
}

// GuardrailCheck is a quote's margin guardrail.
type GuardrailCheck struct {
	DeliveryType     string  `json:"delivery_type"`
	MinimumMarginPct float64 `json:"minimum_margin_pct"`
	ActualMarginPct  float64 `json:"actual_margin_pct"`
	IsCompliant      bool    `json:"is_compliant"`
	Action           string  `json:"action"`
}

// Quote is the answer to GetQuote; the QuoteDetails fields read directly
// (quote.InternalCost, quote.RecommendedPrice).
type Quote struct {
	QuoteID        string `json:"quote_id"`
	QuoteDetails   `json:"quote"`
	GuardrailCheck GuardrailCheck `json:"guardrail_check"`
}

// GetQuote prices work for a customer (POST /pricing/quote); it is recorded in the daemon's
// pricing history.
func (c *Client) GetQuote(ctx context.Context, req QuoteRequest) (*Quote, error) {
	return decoded[Quote](ctx, c, Call{Method: http.MethodPost, Path: "/pricing/quote", Body: req})
}
