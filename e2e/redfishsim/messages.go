package redfishsim

import (
	"fmt"
	"net/http"
)

// message is one entry of @Message.ExtendedInfo (Message schema), with ids
// from the DMTF Base registry.
type message struct {
	ODataType       string   `json:"@odata.type"`
	MessageID       string   `json:"MessageId"`
	Message         string   `json:"Message"`
	MessageArgs     []string `json:"MessageArgs"`
	Severity        string   `json:"Severity"`
	MessageSeverity string   `json:"MessageSeverity"`
	Resolution      string   `json:"Resolution"`
}

const baseRegistry = "Base.1.8."

func newMessage(id, text, resolution string, args ...string) message {
	if args == nil {
		args = []string{}
	}
	return message{
		ODataType:       "#Message.v1_1_1.Message",
		MessageID:       baseRegistry + id,
		Message:         text,
		MessageArgs:     args,
		Severity:        "Critical",
		MessageSeverity: "Critical",
		Resolution:      resolution,
	}
}

// writeError sends the DSP0266 error response: a single "error" object whose
// code/message summarise and whose @Message.ExtendedInfo carries the detail.
func writeError(w http.ResponseWriter, status int, m message) {
	writeJSON(w, status, map[string]any{
		"error": map[string]any{
			"code":                  m.MessageID,
			"message":               m.Message,
			"@Message.ExtendedInfo": []message{m},
		},
	})
}

func msgNoValidSession() message {
	return newMessage("NoValidSession",
		"There is no valid session established with the implementation.",
		"Establish a session before attempting any operations.")
}

func msgSessionLimitExceeded() message {
	return newMessage("SessionLimitExceeded",
		"The session establishment failed due to the number of simultaneous sessions exceeding the limit of the implementation.",
		"Reduce the number of other sessions before trying to establish the session or increase the limit of simultaneous sessions (if supported).")
}

func msgResourceNotFound(uri string) message {
	return newMessage("ResourceNotFound",
		fmt.Sprintf("The requested resource of type %s named '%s' was not found.", "Resource", uri),
		"Provide a valid resource identifier and resubmit the request.", "Resource", uri)
}

func msgOperationNotAllowed(method string) message {
	return newMessage("OperationNotAllowed",
		fmt.Sprintf("The HTTP method %s is not allowed on this resource.", method),
		"Do not repeat the request with this method.", method)
}

func msgMalformedJSON() message {
	return newMessage("MalformedJSON",
		"The request body submitted was malformed JSON and could not be parsed by the receiving service.",
		"Ensure that the request body is valid JSON and resubmit the request.")
}

func msgPropertyMissing(prop string) message {
	return newMessage("PropertyMissing",
		fmt.Sprintf("The property %s is a required property and must be included in the request.", prop),
		"Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed.", prop)
}

func msgActionParameterMissing(action, param string) message {
	return newMessage("ActionParameterMissing",
		fmt.Sprintf("The action %s requires the parameter %s to be present in the request body.", action, param),
		"Supply the action with the required parameter in the request body when the request is resubmitted.", action, param)
}

func msgActionParameterValueNotInList(value, param, action string) message {
	return newMessage("ActionParameterValueNotInList",
		fmt.Sprintf("The value '%s' for the parameter %s in the action %s is not in the list of acceptable values.", value, param, action),
		"Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.", value, param, action)
}

// The "already off" answer is a vendor behaviour, not a Base message; the
// wording follows what such BMCs say.
func msgAlreadyOff() message {
	m := newMessage("GeneralError",
		"Unable to perform the reset action: the system is already powered off.",
		"No action is needed; the system is already in the requested power state.")
	return m
}

func msgSuccess() message {
	m := newMessage("Success", "The request completed successfully.", "None")
	m.Severity, m.MessageSeverity = "OK", "OK"
	return m
}

func msgInternalError() message {
	return newMessage("InternalError",
		"The request failed due to an internal service error.  The service is still operational.",
		"Resubmit the request.  If the problem persists, consider resetting the service.")
}
